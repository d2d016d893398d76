"""Text and data shared by the routes' report sections (pipelines/routes/*/report.py): how a
value, a change and its interval are written, and the training curves of finished trials."""

from __future__ import annotations

import csv
import io
from typing import Any

from pipelines.run_store.location import parent
from pipelines.run_store.run import RunStore


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
    panel per model, or per model and dataset for rows that name one. A training log is a path
    or a URI (a trial on an object store)."""
    curves: dict[str, list] = {}
    for row in rows:
        text = _read_log(row["training_log"]) if row["status"] == "done" else None
        if text is None:
            continue
        log = list(csv.DictReader(io.StringIO(text)))
        panel = f"{row['model']} / {row['dataset']}" if row.get("dataset") else row["model"]
        curves.setdefault(panel, []).append(
            (row["layers"], [int(e["step"]) for e in log], [float(e["loss"]) for e in log]))
    return curves


def _read_log(where: str) -> str | None:
    """The text of the training log ``where`` (a path or a URI); None when it is not there."""
    files, name = RunStore(parent(where)).files, where.rstrip("/").rsplit("/", 1)[-1]
    return files.read_text(name) if files.exists(name) else None
