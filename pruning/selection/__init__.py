"""Which units to remove, given importances: the job's rules (`UnitSelector`), the greedy selections they
use, and the per-layer counts an export layout can state."""

from pruning.selection.layouts import KindRule
from pruning.selection.selector import UnitSelector

__all__ = ["KindRule", "UnitSelector"]
