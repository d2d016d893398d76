"""Labelled texts for the classification objective (mteb's classification layout: text, label).

A split is read through Ray Data like the training triplets (local folder, cloud URI or hf://).
Rows get a content key hashed from the seed, the text and the label, so the batch plan
(``tasks.training.batch_plan``) is the same whatever the file layout. A row whose text is missing, empty
or not text is skipped and counted (or fails naming its file and line, as configured); a label
outside the label list is always an error: it means the label list or the column is wrong, and
training on it would be silently wrong.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.errors import LayercutError
from tasks.training.data import read_rows, row_places, take_summaries, text_problems
from tasks.training.json_lines import UNPARSABLE

FIELDS = ("text", "label")


def column_of(available: list[str], field: str, columns: dict[str, str], path: str) -> str:
    unknown = set(columns) - {*FIELDS, "label_text"}
    if unknown:
        raise LayercutError(f"classification.columns names unknown fields {sorted(unknown)}; "
                            f"fields are {[*FIELDS, 'label_text']}")
    column = columns.get(field, field)
    if column not in available:
        raise LayercutError(f"{path} has no {column!r} column for the {field} "
                            f"(columns are {available}); set classification.columns.{field}")
    return column


def annotate_labeled(table: pa.Table, text_column: str, label_column: str, num_labels: int,
                     source: str, seed: int) -> pa.Table:
    """Columns text, label (int), source, ``_problem`` ('' for a usable row), ``_key``,
    ``_bad_label`` (the raw label when it is outside 0..num_labels-1, else null)."""
    # The same text checks as the triplets (a JSON number as text is a bad row, named by line).
    problems, rows = text_problems(table, {"text": text_column})
    texts = [r["text"] for r in rows]
    raw_labels = table[label_column].to_pylist()
    unparsable = table[UNPARSABLE].to_pylist() if UNPARSABLE in table.column_names else [""] * len(texts)
    places = row_places(table)
    labels, keys, bad = [], [], []
    for text, raw, broken, place in zip(texts, raw_labels, unparsable, places):
        # JSON lines give every value as text: the label 3 arrives as "3".
        label = raw if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool) else None
        if label is None and isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            label = int(raw)
        outside = label is None or not 0 <= label < num_labels
        # A line that is not JSON at all is a bad row (counted above), not a bad label.
        bad.append(f"{str(raw)!r} at {place or 'a row'}" if outside and not broken else None)
        labels.append(-1 if outside else int(label))
        digest = hashlib.blake2b(f"{seed}\0{text}\0{label}".encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big"))
    return pa.table({
        "text": pa.array(texts, type=pa.string()),
        "label": pa.array(labels, type=pa.int64()),
        "source": pa.array([source] * table.num_rows, type=pa.string()),
        "_problem": pa.array(problems, type=pa.string()),
        "_key": pa.array(keys, type=pa.uint64()),
        "_bad_label": pa.array(bad, type=pa.string()),
    })


def _summarize(table: pa.Table, num_labels: int) -> pa.Table:
    problems = table["_problem"].to_pylist()
    bad_labels = [b for b in table["_bad_label"].to_pylist() if b is not None]
    labels = np.asarray(table["label"].to_pylist(), dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=num_labels).tolist()
    return pa.table({"rows": [table.num_rows], "bad": [sum(1 for p in problems if p)],
                     "first_problem": [next((p for p in problems if p), "")],
                     "bad_labels": [len(bad_labels)],
                     "first_bad_label": [bad_labels[0] if bad_labels else ""],
                     "counts": pa.array([counts], type=pa.list_(pa.int64()))})


def annotated_labeled(path: str, *, label_names: list[str], columns: dict[str, str],
                      seed: int, invalid_rows: str = "skip", source: str = "") -> tuple[Any, dict]:
    """(Ray Dataset of annotated rows, report) of one split at ``path``."""
    dataset, available = read_rows(path, "classification data")
    text_column = column_of(available, "text", columns, path)
    label_column = column_of(available, "label", columns, path)
    annotated = dataset.map_batches(
        annotate_labeled, batch_format="pyarrow",
        fn_kwargs={"text_column": text_column, "label_column": label_column,
                   "num_labels": len(label_names), "source": source, "seed": seed})
    summaries = take_summaries(annotated, partial(_summarize, num_labels=len(label_names)), path,
                               "classification data")
    rows = sum(s["rows"] for s in summaries)
    bad = sum(s["bad"] for s in summaries)
    bad_labels = sum(s["bad_labels"] for s in summaries)
    if bad_labels:
        first = next(s["first_bad_label"] for s in summaries if s["first_bad_label"])
        raise LayercutError(
            f"{bad_labels} rows of {path} have labels outside the label list "
            f"0..{len(label_names) - 1} ({', '.join(label_names)}); first: {first}")
    if bad and invalid_rows == "fail":
        first = next(s["first_problem"] for s in summaries if s["first_problem"])
        raise LayercutError(f"{bad} of {rows} rows in {path} have no usable text; first: {first}")
    if rows == bad:
        raise LayercutError(f"classification data {path} has no usable rows ({rows} read)")
    per_class = np.sum([s["counts"] for s in summaries], axis=0, dtype=np.int64)
    first = next((s["first_problem"] for s in summaries if s["first_problem"]), "")
    report = {"path": path, "rows": rows, "skipped_rows": bad, "first_problem": first,
              "per_class": dict(zip(label_names, per_class.tolist()))}
    return annotated, report


def label_names_from_data(path: str, columns: dict[str, str]) -> list[str]:
    """Label names from the split's ``label_text`` column (mteb's layout), ordered by label id."""
    dataset, available = read_rows(path, "classification data")
    label_column = column_of(available, "label", columns, path)
    text_column = columns.get("label_text", "label_text")
    if text_column not in available:
        raise LayercutError(f"{path} has no label_text column to name the labels; set "
                            "classification.label_names")
    try:
        pairs = {(int(r[label_column]), str(r[text_column]))
                 for r in dataset.select_columns([label_column, text_column]).take_all()
                 if r[label_column] is not None}
    except (TypeError, ValueError) as exc:  # a label that is not a whole number
        raise LayercutError(f"a label in {path} is not a label id ({exc}); set "
                            "classification.label_names") from exc
    by_id: dict[int, set[str]] = {}
    for label, name in pairs:
        by_id.setdefault(label, set()).add(name)
    clash = {k: sorted(v) for k, v in by_id.items() if len(v) > 1}
    if clash:
        raise LayercutError(f"label ids with several names in {path}: {clash}; set "
                            "classification.label_names")
    if sorted(by_id) != list(range(len(by_id))):
        raise LayercutError(f"label ids in {path} are {sorted(by_id)}, not 0..n-1; set "
                            "classification.label_names")
    return [next(iter(by_id[k])) for k in range(len(by_id))]


def valid_rows(annotated) -> list[dict[str, Any]]:
    """The usable rows (text, label) of an annotated split, in key order (small splits: test)."""
    import pyarrow.compute as pc

    parts = list(annotated.iter_batches(batch_format="pyarrow", batch_size=65536))
    table = pa.concat_tables(parts)
    table = table.filter(pc.equal(table["_problem"], ""))
    table = table.take(pc.sort_indices(table["_key"]))
    return [{"text": t, "label": label} for t, label in
            zip(table["text"].to_pylist(), table["label"].to_pylist())]
