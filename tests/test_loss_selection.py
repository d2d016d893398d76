"""The InfoNCE loss against a direct computation, and the L3Prune depth-choice conventions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SHARED_CASES
from tasks.scan.selection import choose_depths
from tasks.training.loss import false_negative_mask, hard_negative_infonce, text_ids


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


def _direct_loss_without(q, p, n, scale, dropped):
    """Loop-by-loop, each query's softmax over the candidates left after deleting the columns
    ``dropped[i]`` (a set of candidate indices into [positives; negatives])."""
    total = 0.0
    for i in range(len(q)):
        cands = [c for j, c in enumerate([*p, *n]) if j not in dropped[i]]
        own = scale * float(torch.dot(q[i], p[i]) / (q[i].norm() * p[i].norm()))
        logits = [scale * float(torch.dot(q[i], c) / (q[i].norm() * c.norm())) for c in cands]
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - own
    return total / len(q)


def _duplicates_case():
    rows = [json.loads(line) for line in
            (SHARED_CASES / "duplicates" / "train" / "triplets.jsonl").read_text().splitlines()]
    texts = [*(r["query"] for r in rows), *(r["positive"] for r in rows), *(r["negative"] for r in rows)]
    instructions = [*(r["instruction"] for r in rows), *[None] * (2 * len(rows))]
    return rows, text_ids(texts, instructions).split(len(rows))


def test_false_negatives_of_the_duplicates_case():
    rows, ids = _duplicates_case()
    # Rows 0 and 1 ask the same query (each other's positive is a correct answer); rows 0 and 2
    # share a positive (the same text as the target). Nothing else repeats.
    assert rows[0]["query"] == rows[1]["query"] and rows[0]["positive"] == rows[2]["positive"]
    mask = false_negative_mask(*ids)
    assert mask.shape == (4, 8)
    assert sorted(map(tuple, mask.nonzero().tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]
    # Text identity is what the model sees: surrounding whitespace does not make a new text.
    assert torch.equal(text_ids([" a b\n"], ["q "]), text_ids(["a b"], ["q"]))
    assert not torch.equal(text_ids(["a b"], ["q"]), text_ids(["a b"], [None]))


def test_masked_infonce_equals_the_loss_without_the_duplicate_columns():
    torch.manual_seed(1)
    q, p, n = (torch.randn(4, 8, dtype=torch.float64) for _ in range(3))
    p[2] = p[0]  # as in the case: row 2's positive is row 0's
    _, ids = _duplicates_case()
    mask = false_negative_mask(*ids)
    dropped = [set(row.nonzero().flatten().tolist()) for row in mask]
    for scale in (1.0, 50.0):
        masked = hard_negative_infonce(q, p, n, scale, mask).item()
        assert masked == pytest.approx(_direct_loss_without(q, p, n, scale, dropped), rel=1e-6)
        # No mask (or an all-False one) is today's loss, exactly.
        plain = hard_negative_infonce(q, p, n, scale).item()
        assert plain == pytest.approx(_direct_loss(q, p, n, scale), rel=1e-6)
        assert hard_negative_infonce(q, p, n, scale, torch.zeros_like(mask)).item() == plain
        assert masked <= plain
    assert hard_negative_infonce(q, p, n, 1.0, mask).item() < hard_negative_infonce(q, p, n, 1.0).item()
    # Leading (per-layer) dims share the one mask.
    stacked = hard_negative_infonce(torch.stack([q, q]), torch.stack([p, p]), torch.stack([n, n]), 50.0, mask)
    assert torch.allclose(stacked, torch.full((2,), hard_negative_infonce(q, p, n, 50.0, mask).item(),
                                              dtype=stacked.dtype), rtol=1e-6)


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
