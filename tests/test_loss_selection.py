"""The InfoNCE loss against a direct computation, and the L3Prune depth-choice conventions."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.loss import hard_negative_infonce
from tasks.selection import choose_depths


def _direct_loss(q, p, n, scale):
    """Loop-by-loop: -log softmax over [all positives, all negatives] at the own positive."""
    total = 0.0
    for i in range(len(q)):
        cands = [*p, *n]
        logits = [scale * float(torch.dot(q[i], c) / (q[i].norm() * c.norm())) for c in cands]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_z - logits[i]
    return total / len(q)


def test_infonce_matches_direct_computation():
    torch.manual_seed(0)
    q, p, n = (torch.randn(5, 8, dtype=torch.float64) for _ in range(3))
    for scale in (1.0, 20.0, 50.0):
        got = hard_negative_infonce(q, p, n, scale).item()
        assert got == pytest.approx(_direct_loss(q, p, n, scale), rel=1e-6)


def test_infonce_hand_made_perfect_and_per_layer():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = q.clone()
    n = -q
    # Own positive: cos 1; other positive: cos 0; negatives: cos -1 and 0.
    expected = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(0) + math.exp(-2)))
    assert hard_negative_infonce(q, p, n, 2.0).item() == pytest.approx(expected, rel=1e-6)
    stacked = hard_negative_infonce(torch.stack([q, q]), torch.stack([p, n]), torch.stack([n, p]), 2.0)
    assert stacked.shape == (2,)
    assert stacked[0].item() == pytest.approx(expected, rel=1e-6)
    assert stacked[1].item() > stacked[0].item()


@pytest.mark.parametrize("losses, picks", [
    ([5, 4, 3, 4, 5, 1, 2], (3, 6)),               # L odd: m = 3, small in 1..3, large in 4..7
    ([5, 4, 3, 4, 5, 1], (3, 6)),                  # L even: m = 3, large may be L itself
    ([1, 1, 1, 1], (1, 3)),                        # ties: the shallower depth
    ([2, 0.5, 0.5, 3, 0.2, 0.2, 0.9, 1.0], (2, 5)),
    ([0.1, 9, 9, 9, 9, 9, 9, 0.1], (1, 8)),
    ([3.0], (1, 1)),                               # L = 1: no small half
    ([3.0, 1.0], (1, 2)),
])
def test_choose_depths_conventions(losses, picks):
    assert choose_depths(losses) == picks


def test_small_never_exceeds_half():
    losses = [9.0] * 10 + [0.0] * 10
    small, large = choose_depths(losses)
    assert small <= 10 < large
