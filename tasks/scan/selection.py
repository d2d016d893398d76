"""The L3Prune choice of a small and a large depth from the per-layer initial loss."""

from __future__ import annotations

from typing import Sequence


def choose_depths(losses: Sequence[float]) -> tuple[int, int]:
    """(small, large) kept-layer counts from ``losses[l-1]`` = loss of the depth-l model.

    m = floor(L/2); small = argmin over l in 1..m, large = argmin over l in m+1..L, as in the
    official code. Ties go to the shallower depth (fewer parameters for the same loss).
    With L = 1 there is no small half: both picks are 1.
    """
    total = len(losses)
    if total == 0:
        raise ValueError("no per-layer losses to choose from")
    mid = total // 2

    def argmin(first: int, last: int) -> int:  # inclusive 1-based range
        return min(range(first, last + 1), key=lambda depth: (losses[depth - 1], depth))

    large = argmin(mid + 1, total)
    small = argmin(1, mid) if mid >= 1 else large
    return small, large
