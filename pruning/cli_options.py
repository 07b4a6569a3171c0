"""Command-line options generated from `PruneSettings`' fields, for every CLI that starts a job.

`fwdprune prune` (the engine here) and `fwdprune submit` (a job on a server) both add these, so each
setting has one name, type, default and help text, taken from the request model itself by
pydantic-settings: `--sparsity 0.3 --method flap --no-uniform --options rounds=2 --options ridge=0.5`.
Torch-free, like the settings.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic_settings import CliSettingsSource

from pruning.spec import PruneSettings


def add_settings_options(parser: argparse.ArgumentParser) -> CliSettingsSource[Any]:
    """Add one option per `PruneSettings` field to `parser`; the returned source reads them back."""
    # pydantic-settings reads the fields of any pydantic model, though its signature names BaseSettings
    return CliSettingsSource(
        PruneSettings,  # type: ignore[arg-type]
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_parse_none_str="null",
    )


def settings_given(source: CliSettingsSource[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line set, by field name; the rest keep the model's defaults."""
    return dict(source(parsed_args=args)())
