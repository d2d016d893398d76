"""Which decoder layers a cut model keeps: a sorted tuple of 0-based indices of the base model's
L layers, the resolved form of every depth (tasks/model/depth.py).

A depth that keeps the first n layers (a count, ``keep:``, ``prune:``; L3Prune, REFERENCE:
Pruning) resolves to the prefix (0, ..., n-1), the fast path: pruning deletes the tail and
loading reads the first n layers as they are. Any other selection (a criterion that drops
middle layers, e.g. Block Influence, ShortGPT: Men et al. 2024, arXiv 2403.03853) keeps its
layers in their original order and renumbers them 0..n-1 in the cut model, so the cut model is an
ordinary n-layer model of its family.

The index text ``0-2,5-6`` (ranges inclusive, comma separated) is how configs and the CLI write
a selection (``keep-indices:0-2,5-6``); ``k0-2+5-6`` is its name in run and trial directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tasks.errors import LayercutError


def parse_indices(value: Any) -> tuple[int, ...]:
    """Sorted layer indices from a list of ints or an index text such as "0-2,5-6" or "[0,1,5]".

    Raises:
        LayercutError: naming the bad value: empty, not an int, negative, a range that runs
            backwards, or an index given twice.
    """
    if isinstance(value, str):
        text = value.strip().removeprefix("[").removesuffix("]")
        value = [_range(part.strip(), value) for part in text.split(",")] if text.strip() else []
        value = [index for part in value for index in part]
    if not isinstance(value, (list, tuple)):
        raise LayercutError(f"layer indices {value!r}: give a list such as [0, 1, 2, 5, 6]")
    for index in value:
        if isinstance(index, bool) or not isinstance(index, int):
            raise LayercutError(f"layer index {index!r} is not an integer")
        if index < 0:
            raise LayercutError(f"layer index {index} is negative: indices count from 0")
    if not value:
        raise LayercutError("the layer selection is empty: keep at least one layer")
    repeated = sorted({index for index in value if list(value).count(index) > 1})
    if repeated:
        raise LayercutError(f"layer index {repeated[0]} is given twice")
    return tuple(sorted(value))


def _range(part: str, original: str) -> range:
    low, dash, high = part.partition("-")
    try:
        first, last = int(low), int(high) if dash else int(low)
    except ValueError:
        raise LayercutError(f"layer indices {original!r}: {part!r} is not an index or a range "
                            "like 0-2") from None
    if last < first:
        raise LayercutError(f"layer indices {original!r}: the range {part!r} runs backwards")
    return range(first, last + 1)


def index_text(indices: Sequence[int], separator: str = ",") -> str:
    """"0-2,5-6" for (0, 1, 2, 5, 6): runs of consecutive indices as inclusive ranges."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return separator.join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


@dataclass(frozen=True)
class LayerSelection:
    """The kept layers of a model of ``total`` layers: ``indices`` sorted, each in 0..total-1.

    Raises (on construction):
        LayercutError: an empty, unsorted or repeated selection, or an index outside 0..total-1.
    """

    indices: tuple[int, ...]
    total: int

    def __post_init__(self) -> None:
        if not self.indices:
            raise LayercutError("the layer selection is empty: keep at least one layer")
        if list(self.indices) != sorted(set(self.indices)):
            raise LayercutError(f"layer indices {list(self.indices)} must be distinct and sorted")
        outside = [index for index in self.indices if not 0 <= index < self.total]
        if outside:
            raise LayercutError(f"layer index {outside[0]} is out of range: the model has layers "
                                f"0..{self.total - 1}")

    @classmethod
    def prefix(cls, count: int, total: int) -> "LayerSelection":
        """The first ``count`` layers (L3Prune's cut)."""
        return cls(tuple(range(count)), total)

    @property
    def count(self) -> int:
        """How many layers are kept: the cut model's num_hidden_layers."""
        return len(self.indices)

    @property
    def is_prefix(self) -> bool:
        return self.indices[-1] == self.count - 1

    @property
    def name(self) -> str:
        """For run and trial names: "l5" for the first 5 layers, "k0-2+5-6" otherwise."""
        return f"l{self.count}" if self.is_prefix else "k" + index_text(self.indices, "+")

    @property
    def label(self) -> str:
        """For tables and plots: "5" for a prefix, "0-2,5-6" otherwise."""
        return str(self.count) if self.is_prefix else index_text(self.indices)

    def describe(self, noun: str = "layers") -> str:
        """For model cards: "the first 5 of 8 layers" or "layers 0-2, 5-6 (5 of 8)"."""
        if self.is_prefix:
            return f"the first {self.count} of {self.total} {noun}"
        return f"{noun} {index_text(self.indices, ', ')} ({self.count} of {self.total})"

    def of_total(self) -> str:
        """For tables and titles: "5 of 8", or "0-2, 5-6 (5 of 8)" for a selection."""
        counted = f"{self.count} of {self.total}"
        return counted if self.is_prefix else f"{index_text(self.indices, ', ')} ({counted})"

    def to_json(self) -> int | list[int]:
        """The layer count for a prefix (what every record said before selections), else the indices."""
        return self.count if self.is_prefix else list(self.indices)

    def parameters(self, cumulative: Sequence[int]) -> int:
        """Parameters of the cut model, from ``cumulative[l]`` = parameters of the model cut to its
        first l layers (l = 0..L; tasks.model.pruning.parameters_at_depth): the part outside the layers
        plus each kept layer's own count."""
        return cumulative[0] + sum(cumulative[i + 1] - cumulative[i] for i in self.indices)
