"""Each method's options validate a job's `options` torch-free, and their bounds are what the service's
limits keep within."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pruning.errors import UsageError
from pruning.methods.bonsai.options import BUDGETS, BonsaiOptions
from pruning.methods.options import METHOD_OPTIONS, MethodOptions, field_bounds, options_for
from pruning.methods.registry import METHODS
from pruning.spec import PruneSettings
from service.settings import JobLimits


def test_every_method_the_entry_points_offer_has_a_method_and_options() -> None:
    assert set(METHOD_OPTIONS) == set(METHODS)
    assert options_for("bonsai") is BonsaiOptions and BonsaiOptions.budgets is BUDGETS
    assert options_for("flap") is MethodOptions and MethodOptions.budgets == {}
    with pytest.raises(UsageError, match="unknown method 'magic'; available: bonsai, flap"):
        options_for("magic")
    with pytest.raises(ValidationError, match="Input should be 'bonsai', 'random', 'wanda-sp' or 'flap'"):
        PruneSettings(sparsity=0.3, method="magic")


def test_a_budget_presets_only_its_methods_options() -> None:
    fast = PruneSettings(sparsity=0.3).method_options("fast")
    assert isinstance(fast, BonsaiOptions) and fast.rounds == BUDGETS["fast"]["rounds"]
    assert PruneSettings(sparsity=0.3, method="flap").method_options("fast") == MethodOptions()


def test_the_service_limits_keep_within_the_options_own_bounds() -> None:
    assert field_bounds(BonsaiOptions, "samples_per_unit") == {"gt": 0.0, "le": 8.0}
    for name in ("rounds", "samples_per_round", "scoring_sequences", "split_candidates", "prior_sequences"):
        assert field_bounds(JobLimits, name) == field_bounds(BonsaiOptions, name), name
    for name in ("seq_len", "num_samples", "eval_samples", "gpus"):
        assert field_bounds(JobLimits, name) == field_bounds(PruneSettings, name), name
