"""Command-line options generated from `PruneSettings`' fields, for every CLI that starts a job.

`fwdprune prune` (the engine here) and `fwdprune submit` (a job on a server) both add these, so each
setting has one name, type, default and help text, taken from the request model itself by
pydantic-settings: `--sparsity 0.3 --method flap --no-uniform --options rounds=2 --options ridge=0.5`.
Torch-free, like the settings.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic_settings import CliSettingsSource

from pruning.spec import PruneSettings

# settings whose type alone would not tell a person what to write
NAMED_METAVARS = {
    "sparsity": "FRACTION[,FRACTION...]",
    "time_limit": "DURATION",
    "max_time": "DURATION",
    "recover_time": "DURATION",
    "options": "KEY=VALUE",
}


def add_settings_options(parser: argparse.ArgumentParser) -> CliSettingsSource[Any]:
    """Add one option per `PruneSettings` field to `parser`; the returned source reads them back."""
    # pydantic-settings reads the fields of any pydantic model, though its signature names BaseSettings
    source: CliSettingsSource[Any] = CliSettingsSource(
        PruneSettings,  # type: ignore[arg-type]
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_parse_none_str="null",
    )
    readable_metavars(parser)
    return source


def readable_metavars(parser: argparse.ArgumentParser) -> None:
    """Name each setting's value as a person writes it (`INT`, `{lm,distill}`, `DURATION`) instead of the
    Python type pydantic-settings prints (`{int,null}`, `{{lm,distill},null}`); parsing is unchanged."""
    for action in parser._actions:
        field = PruneSettings.model_fields.get(action.dest)
        if field is not None and action.metavar is not None:  # flags (--uniform) take no value
            action.metavar = (
                NAMED_METAVARS.get(action.dest)
                or registered_choices(field.json_schema_extra)
                or metavar_of(action.dest, field.annotation)
            )


def registered_choices(schema_extra: Any) -> str | None:
    """`{a,b}` for a setting whose choices are a registry's names (its schema's enum, made when asked)."""
    if not callable(schema_extra):
        return None
    schema: dict[str, Any] = {}
    schema_extra(schema)
    return "{" + ",".join(schema["enum"]) + "}" if "enum" in schema else None


def metavar_of(name: str, annotation: Any) -> str:
    """`{a,b}` for a choice, `INT` / `FLOAT` / `STR` for a plain type, optional or not; else the name."""
    members = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
    if len(members) != 1:
        return name.upper()
    (member,) = members
    if typing.get_origin(member) is Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(member)) + "}"
    if member in (int, float, str):
        return member.__name__.upper()
    return name.upper()


def settings_given(source: CliSettingsSource[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line set, by field name; the rest keep the model's defaults."""
    return dict(source(parsed_args=args)())
