"""Greedy structured OBS on hand-made Gram matrices with known answers."""

from __future__ import annotations

import torch

from pruning.compensation.obs import structured_obs_removals


def test_uncorrelated_channels_go_in_order_of_output_energy() -> None:
    # H = diag(x²): cost of channel j is x_j² ‖W_:j‖², nothing to refit onto
    gram = torch.diag(torch.tensor([1.0, 4.0, 1.0, 9.0]))
    weight = torch.tensor([[3.0, 1.0, 1.0, 1.0]])  # costs 9, 4, 1, 9
    removed = structured_obs_removals(gram, weight, torch.arange(4), 3, damp=0.0)
    assert removed.tolist()[:2] == [2, 1]
    assert removed.dtype == torch.long and removed.shape == (3,)


def test_a_duplicated_channel_costs_nothing_to_remove() -> None:
    # channels 0 and 1 carry the same signal: the refit moves 0's weight onto 1, so 0 goes first even
    # though its output is the largest; an activation-norm score would remove channel 2 first
    x = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])  # [n, C]
    weight = torch.tensor([[5.0, 5.0, 1.0]])
    removed = structured_obs_removals(x.T @ x, weight, torch.arange(3), 1, damp=1e-9)
    assert removed.tolist() in ([0], [1])


def test_units_of_several_channels_are_removed_whole() -> None:
    # units {0, 1} and {2, 3}: the second carries less output, so it goes
    gram = torch.eye(4)
    weight = torch.tensor([[2.0, 2.0, 1.0, 0.5]])
    removed = structured_obs_removals(gram, weight, torch.tensor([0, 0, 1, 1]), 1, damp=0.0)
    assert removed.tolist() == [1]


def test_later_choices_see_earlier_refits() -> None:
    # three copies of one signal (0, 1, 2) and a weak independent channel 3: the first copy goes for
    # free, the second too (a third copy remains), then the cheapest is the weak channel, not the last copy
    signal, other = torch.tensor([1.0, -1.0, 2.0, 0.5]), torch.tensor([0.3, 0.1, -0.2, 0.4])
    x = torch.stack([signal, signal, signal, other], dim=1)  # [n, 4]
    weight = torch.tensor([[1.0, 1.0, 1.0, 0.1]])
    removed = structured_obs_removals(x.T @ x, weight, torch.arange(4), 3, damp=1e-9)
    assert set(removed.tolist()[:2]) < {0, 1, 2}
    assert removed.tolist()[2] == 3
