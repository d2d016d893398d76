"""One meaning of a depth: how many decoder layers a cut model keeps.

A depth is written one of four ways, everywhere (CLI ``--layers``, every config, the sweep's
grid, trial names and the report):

- ``8``: a layer count, kept as is (1..L);
- ``prune:0.3``: the paper's p, the fraction of the LAST layers removed;
- ``keep:0.7``: the fraction kept, the same as ``prune:0.3``;
- ``keep-indices:0-2,5-6`` (or a list ``[0, 1, 2, 5, 6]``): exactly these 0-based layers, in their
  order; any pruning criterion's choice (tasks/model/layer_selection.py).

The first three keep a prefix of the layers; every depth resolves to a LayerSelection
(``Depth.select``), whose prefix is the fast path of pruning and loading.

A fraction becomes a count with the official rule n = int(L * (1 - p)) (l3prune's
``percent_prune``), computed in exact decimal arithmetic: in floats, 1 - 0.9 is 0.0999...98, and
int(30 * (1 - 0.9)) gives 2 where the rule means 3. A bare fraction (``0.3``) is refused: the CLI
once read it as "prune" and the sweep's grid as "keep", and on 32 layers the two readings of
a 90/80/40/30 % grid differ by one layer each.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from tasks.errors import LayercutError
from tasks.model.layer_selection import LayerSelection, index_text, parse_indices

_HOW = ("write a layer count (8), prune:0.3 (the fraction of the last layers removed), keep:0.7 "
        "or keep-indices:0-2,5-6 (these layers)")
INDICES = "keep-indices"


@dataclass(frozen=True)
class Depth:
    """A depth: ``kind`` "count" with an int ``value``, "keep"/"prune" with an exact fraction, or
    "indices" with the sorted tuple of kept layer indices."""

    kind: Literal["count", "keep", "prune", "indices"]
    value: int | Fraction | tuple[int, ...]

    @classmethod
    def parse(cls, value: Any) -> "Depth":
        """A Depth from an int, "8", "keep:0.7", "prune:0.3", "prune:30%", a list of layer indices,
        "keep-indices:0-2,5-6" (or a Depth).

        Raises:
            LayercutError: a float, bool or anything else, a fraction outside its range, or an
                empty, negative or repeated index.
        """
        if isinstance(value, Depth):
            return value
        if isinstance(value, (list, tuple)):
            return cls("indices", parse_indices(value))
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise LayercutError(f"depth {value}: a layer count is at least 1")
            return cls("count", value)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls.parse(int(text))
            if text.startswith("["):  # a list written on the command line
                return cls("indices", parse_indices(text))
            kind, sep, number = text.partition(":")
            if sep and kind.strip() == INDICES:
                return cls("indices", parse_indices(number))
            if sep and kind.strip() in ("keep", "prune"):
                return cls._fraction(kind.strip(), number.strip(), value)
            try:  # "0.3" on the command line: the same answer as the number
                value = float(text)
            except ValueError:
                pass
        if isinstance(value, float):
            raise LayercutError(f"depth {value} is ambiguous: write prune:{value} (removes that fraction of "
                                f"the last layers, the paper's p), keep:{value}, or a layer count")
        raise LayercutError(f"depth {value!r} is not a depth: {_HOW}")

    @classmethod
    def _fraction(cls, kind: str, number: str, original: Any) -> "Depth":
        try:
            fraction = Fraction(number[:-1]) / 100 if number.endswith("%") else Fraction(number)
        except (ValueError, ZeroDivisionError):
            raise LayercutError(f"depth {original!r}: {number!r} is not a number") from None
        low_ok = fraction > 0 if kind == "keep" else fraction >= 0
        high_ok = fraction <= 1 if kind == "keep" else fraction < 1
        if not (low_ok and high_ok):
            bounds = "(0, 1]" if kind == "keep" else "[0, 1)"
            raise LayercutError(f"depth {original!r}: a {kind} fraction lies in {bounds}")
        return cls(kind, fraction)

    def layers(self, total_layers: int) -> int:
        """The number of layers kept of ``total_layers``: n = int(L * (1 - p)), exactly.

        Raises:
            LayercutError: a count outside 1..L, a fraction that keeps no layer, or an index
                outside 0..L-1.
        """
        if self.kind == "indices":
            return self.select(total_layers).count
        if self.kind == "count":
            if not 1 <= self.value <= total_layers:
                raise LayercutError(f"depth {self.value} is out of range: the model has layers 1..{total_layers}")
            return int(self.value)
        kept_fraction = self.value if self.kind == "keep" else 1 - self.value
        kept = (total_layers * kept_fraction.numerator) // kept_fraction.denominator
        if kept < 1:
            raise LayercutError(f"depth {self} of {total_layers} layers keeps none")
        return kept

    def select(self, total_layers: int) -> LayerSelection:
        """The kept layers of ``total_layers``: the first ``layers(total_layers)``, or the indices.

        Raises:
            LayercutError: as ``layers``.
        """
        if self.kind == "indices":
            return LayerSelection(self.value, total_layers)
        return LayerSelection.prefix(self.layers(total_layers), total_layers)

    def __str__(self) -> str:
        if self.kind == "count":
            return str(self.value)
        if self.kind == "indices":
            return f"{INDICES}:{index_text(self.value)}"
        return f"{self.kind}:{_decimal(self.value)}"

    @property
    def slug(self) -> str:
        """For directory names: "8", "keep0.7", "prune0.3", "k0-2+5-6"."""
        if self.kind == "indices":
            return "k" + index_text(self.value, "+")
        return str(self).replace(":", "")


def _decimal(fraction: Fraction) -> str:
    """0.3 for 3/10; the exact fraction where it has no short decimal."""
    for digits in range(1, 7):
        if round(fraction, digits) == fraction:
            return f"{float(fraction):.{digits}f}"
    return str(fraction)
