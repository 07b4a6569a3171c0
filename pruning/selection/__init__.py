"""Which units to remove, given importances: the job's rules (`UnitSelector`), the greedy selections they
use, and the per-layer counts an export layout can state."""

from pruning.selection.selector import UnitSelector
from pruning.selection.width_rules import KindRule

__all__ = ["KindRule", "UnitSelector"]
