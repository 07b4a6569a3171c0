"""What a job refuses of a checkpoint before any work, read without torch: the API checks it at submit,
the engine again before it loads anything.

Its config.json is read once (`pruning.checkpoint_config.read_config`, which trusts nothing in it), its
family looked up in the family table (`pruning.families`), the export format asked for given its say
(`Exporter.refuse`), and the sizes the config states checked against the weights' headers
(`pruning.checkpoint_files.check_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.checkpoint_config import read_config
from pruning.checkpoint_files import check_weights
from pruning.export.formats import exporter_for
from pruning.families import family_of

if TYPE_CHECKING:
    from pruning.spec import PruneSettings


def check_checkpoint(model_dir: Path, settings: PruneSettings) -> str:
    """The checkpoint's `model_type`, once its config.json is read (`read_config`) and checked: a
    supported family with sizes a model has (`checked_model_type`), which the asked export format can
    write (its exporter's `refuse`), and sizes its weights' headers hold too (`check_weights`: nothing is
    built from a config the weights do not bear out). What the API checks at submit, and the engine
    before it loads anything."""
    config = read_config(model_dir)
    model_type = checked_model_type(config)
    exporter_for(settings.export_format).refuse(model_type, settings, config)
    check_weights(model_dir, config)
    return model_type


def read_model_type(model_dir: Path) -> str:
    """The checkpoint's `model_type`, its config.json read by `read_config` (anything but a JSON object
    is refused), refusing unsupported ones with the list of supported ones."""
    return checked_model_type(read_config(model_dir))


def checked_model_type(config: dict[str, Any]) -> str:
    """The `model_type` of a checkpoint's config, refusing an unsupported one (with the list of supported
    ones) and sizes no model of its family has (`pruning.families.family_of`)."""
    return family_of(config).model_type
