"""Text and data shared by the routes' report sections (pipelines/routes/*/report.py): how a
value, a change and its interval are written, and the training curves of finished trials."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def change_text(change: float | None, interval: list[float] | None = None) -> str:
    """A change, and its paired 95% interval when it has one; n/a without the change."""
    if change is None:
        return "n/a"
    return f"{change:+.4f}" + (f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "")


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``; n/a for None."""
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def training_curves(rows) -> dict[str, list[tuple[int, list[int], list[float]]]]:
    """{panel: [(layers, steps, losses)]} of the finished rows whose training log exists: one
    panel per model, or per model and dataset for rows that name one."""
    curves: dict[str, list] = {}
    for row in rows:
        if row["status"] != "done" or not Path(row["training_log"]).exists():
            continue
        with open(row["training_log"]) as handle:
            log = list(csv.DictReader(handle))
        panel = f"{row['model']} / {row['dataset']}" if row.get("dataset") else row["model"]
        curves.setdefault(panel, []).append(
            (row["layers"], [int(e["step"]) for e in log], [float(e["loss"]) for e in log]))
    return curves
