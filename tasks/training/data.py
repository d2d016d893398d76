"""Training triplets through Ray Data: resolve the source, validate rows, sample reproducibly.

Rows have the fields query, positive, negative (required) and instruction, source (optional).
Two layouts: ``triplets`` (rows carry their own instruction, if any) and ``e5`` (a folder of
``<source>.jsonl`` files whose instructions come from the E5 table by source and line:
tasks/training/e5_data.py).
Sampling does not depend on file layout, block sizes or worker count: every valid row gets a key
hashed from the seed and its content, and the ``num_batches x batch_size`` rows with the smallest
keys are taken, in key order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from tasks.errors import LayercutError
from tasks.object_store import filesystem_of, is_uri
from tasks.training.e5_data import E5_INSTRUCTIONS, e5_instruction, e5_source
from tasks.training.fields import FIELD_ALIASES, OPTIONAL_FIELDS, REQUIRED_FIELDS
from tasks.training.json_lines import LINE, NOT_TEXT, UNPARSABLE, json_type, read_json_lines

DATA_ROOT_ENV = "LAYERCUT_DATA_ROOT"
INTERNAL_COLUMNS = (LINE, NOT_TEXT, UNPARSABLE)  # added by the JSON-lines reader


def resolve_source(source: str, local_source: str | None, data_root: str | None) -> str:
    """The path or URI to read: under the data root (a local mirror) when one is set."""
    data_root = data_root or os.environ.get(DATA_ROOT_ENV) or None
    if data_root is None:
        return source
    if not local_source:
        raise LayercutError("a data root is set but the data config names no local_source in it")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise LayercutError(f"data root {root} is not a directory")
    return str((root / local_source).resolve())


def _filesystem_for(path: str):
    """(pyarrow filesystem or None, path for it). hf:// goes through huggingface_hub's fsspec; an
    object store (s3://, gs://) through the filesystem that carries the driver's keys to Ray
    Data's read tasks (tasks/object_store.filesystem_of); None for a local path."""
    scheme = urlparse(path).scheme
    if scheme == "hf":
        from huggingface_hub import HfFileSystem
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(HfFileSystem())), path[len("hf://"):]
    if is_uri(path):
        return filesystem_of(path)
    return None, path


def _format_of(path: str, filesystem, fs_path: str) -> str:
    lowered = path.lower().rstrip("/")
    if lowered.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return "json"
    if lowered.endswith(".parquet"):
        return "parquet"
    # A directory: Parquet if it holds any Parquet file (hub datasets), else JSON lines (an E5
    # folder of <source>.jsonl files, here or on an object store).
    if filesystem is None:
        local = Path(urlparse(path).path if path.startswith("file:") else path)
        return "parquet" if any(local.rglob("*.parquet")) else "json"
    if urlparse(path).scheme == "hf":  # listing a hub repository costs requests: its data is Parquet
        return "parquet"
    from pyarrow.fs import FileSelector

    found = filesystem.get_file_info(FileSelector(fs_path.rstrip("/"), recursive=True))
    return "parquet" if any(info.path.endswith(".parquet") for info in found) else "json"


def read_triplets(path: str):
    """A Ray Dataset over the raw rows of ``path`` (JSONL or Parquet; local, cloud URI or hf://)."""
    scheme = urlparse(path).scheme
    if scheme in ("", "file"):
        local = Path(urlparse(path).path if scheme == "file" else path).expanduser()
        if not local.exists():
            raise LayercutError(f"training data not found: {local}")
        if local.is_file() and not os.access(local, os.R_OK):
            raise LayercutError(f"training data is not readable: {local}")
    filesystem, fs_path = _filesystem_for(path)
    kwargs = {"filesystem": filesystem} if filesystem is not None else {}
    try:
        if _format_of(path, filesystem, fs_path) == "json":
            # Line by line, every column text: one bad line is one bad row (tasks.training.json_lines).
            return read_json_lines(fs_path, file_extensions=["json", "jsonl", "gz"],
                                   include_paths=True, **kwargs)
        return _read_parquet_v1(fs_path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise LayercutError(f"cannot read training data {path}: {short_error(exc)}") from exc


def _read_parquet_v1(fs_path: str, **kwargs):
    """``ray.data.read_parquet`` through Ray Data's first Parquet reader (DataContext
    ``use_datasource_v2`` off for this call only; the choice is made when the read is created).

    Why: the V2 reader (Ray Data's default in the Ray we pin) lists every read with a pool of
    up to 32 ``FooterReader`` actors (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS), each a new worker
    process, and a stage executes a read several times (schema, data report, batch plan,
    per-worker slots). One small file here (scripts/bench_parquet_read.py): 2.27 s a read
    against 0.39 s; in the main job's test the footer actors were 82 processes and a fifth of
    its CPU time. V1 reads the footers in the driver and, for many files, in parallel tasks:
    the same rows, the same columns.
    """
    import ray.data
    from ray.data import DataContext

    context = DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(fs_path, file_extensions=["parquet"], include_paths=True, **kwargs)
    finally:
        context.use_datasource_v2 = default


def read_rows(path: str, what: str = "training data"):
    """(Ray Dataset over the rows of ``path``, its column names), or a one-line error."""
    dataset = read_triplets(path)
    try:
        columns = column_names(dataset)
    except Exception as exc:  # noqa: BLE001
        raise LayercutError(f"cannot read {what} {path}: {short_error(exc)}") from exc
    if columns is None:
        raise LayercutError(f"{what} {path} holds no rows")
    names = [n for n in columns if n != "path" and n not in INTERNAL_COLUMNS]
    if not names and UNPARSABLE in columns:  # JSON lines, none of them an object
        try:
            first = dataset.take(1)[0]
        except Exception as exc:  # noqa: BLE001
            raise LayercutError(f"cannot read {what} {path}: {short_error(exc)}") from exc
        place = " ".join(str(p) for p in (first.get("path"), f"line {first[LINE]}") if p)
        raise LayercutError(f"{what} {path} has no usable rows; first problem: {place}: "
                            f"{first[UNPARSABLE]}")
    return dataset, names


def column_names(dataset) -> list[str] | None:
    """The column names of ``dataset``: its schema when known without reading (Parquet), else
    those of its blocks that hold rows, in first-seen order (JSON lines may differ from block to
    block); None when no block holds a row.

    Read through to the end rather than with ``Dataset.schema()``: for a read whose schema is
    not known beforehand (JSON lines), schema() runs the read with limit(1) and shuts it down
    by cancelling its still-running read tasks, and in the Ray we pin (2.60) that cancellation
    can race the task's completion in the driver's core worker, which then aborts the driver
    (task_manager.cc "Check failed ... Tried to complete task that was not pending"; seen at a
    stage's first read, twice in CI). A read that runs to its end has nothing to cancel.
    """
    known = dataset.schema(fetch_if_missing=False)  # Parquet: from the files' footers, no read
    if known is not None:
        return list(known.names)
    found = dataset.map_batches(_block_columns, batch_format="pyarrow", batch_size=None).take_all()
    columns = [name for row in found for name in json.loads(row["columns"])]
    return list(dict.fromkeys(columns)) or None


def _block_columns(table: pa.Table) -> pa.Table:
    """One row naming ``table``'s columns (JSON), or no row for an empty block."""
    return pa.table({"columns": [json.dumps(table.column_names)] if table.num_rows else []},
                    schema=pa.schema([("columns", pa.string())]))


def take_summaries(annotated, summarize, path: str, what: str = "training data") -> list[dict]:
    """Per-block summaries of an annotated dataset (reading it through once), or a one-line error."""
    try:
        return annotated.map_batches(summarize, batch_format="pyarrow").take_all()
    except Exception as exc:  # noqa: BLE001
        raise LayercutError(f"cannot read {what} {path}: {short_error(exc)}") from exc


def short_error(exc: BaseException) -> str:
    """The innermost cause's first line: Ray wraps worker errors in several layers."""
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def column_mapping(available: list[str], overrides: dict[str, str]) -> dict[str, str]:
    """Our field -> the dataset's column, from explicit overrides or known aliases."""
    unknown = set(overrides) - set(FIELD_ALIASES)
    if unknown:
        raise LayercutError(f"data.columns names unknown fields {sorted(unknown)}; "
                            f"fields are {list(FIELD_ALIASES)}")
    mapping = {}
    for field, aliases in FIELD_ALIASES.items():
        candidates = (overrides[field],) if field in overrides else aliases
        found = next((c for c in candidates if c in available), None)
        if found is not None:
            mapping[field] = found
        elif field in OPTIONAL_FIELDS:
            # The schema is the first block's: an optional key that appears only in later rows
            # (blocks of JSON lines each have their own keys) is still read where it is.
            mapping[field] = candidates[0]
        elif field in REQUIRED_FIELDS:
            raise LayercutError(
                f"training data has no {field!r} column (looked for {list(candidates)}; "
                f"columns are {available})")
    return mapping


def row_places(table: pa.Table) -> list[str]:
    """Where each row is: 'file line N' for JSON lines, 'file' for Parquet (no row numbers)."""
    paths = table["path"].to_pylist() if "path" in table.column_names else [None] * table.num_rows
    lines = table[LINE].to_pylist() if LINE in table.column_names else [None] * table.num_rows
    return [" ".join(p for p in (path, None if line is None else f"line {line}") if p)
            for path, line in zip(paths, lines)]


def text_problems(table: pa.Table, fields: dict[str, str], optional: tuple[str, ...] = ()
                  ) -> tuple[list[str], list[dict]]:
    """(per row: '' or why the row cannot be used, per row: {field: text or None}) for the text
    ``fields`` (our field name -> the table's column; an absent column reads as missing).

    A value that is missing, blank or not text (a JSON number, a Parquet int column) makes the
    row unusable, except that ``optional`` fields may be missing or blank; the reason names the
    file, the line where known, and the field. Values that are not text come back as None.
    """
    n = table.num_rows
    values = {f: table[c].to_pylist() if c in table.column_names else [None] * n
              for f, c in fields.items()}
    not_text = table[NOT_TEXT].to_pylist() if NOT_TEXT in table.column_names else [""] * n
    unparsable = table[UNPARSABLE].to_pylist() if UNPARSABLE in table.column_names else [""] * n
    places = row_places(table)
    problems, rows = [], []
    for row in range(n):
        flagged = json.loads(not_text[row]) if not_text[row] else {}
        problem = unparsable[row] or ""
        for field, column in fields.items():
            if problem:
                break
            value = values[field][row]
            if field in optional and (value is None or (isinstance(value, str) and not value.strip())
                                      ) and column not in flagged:
                continue
            if value is None:
                problem = f"{field!r} is missing"
            elif column in flagged or not isinstance(value, str):
                kind = flagged.get(column) or json_type(value)
                problem = f"{field!r} is a {kind} ({str(value)[:40]}), not text"
            elif not value.strip():
                problem = f"{field!r} is empty"
        problems.append(f"{places[row] or 'row'}: {problem}" if problem else "")
        rows.append({f: v if isinstance(v := values[f][row], str) and c not in flagged else None
                     for f, c in fields.items()})
    return problems, rows


def annotate(table: pa.Table, mapping: dict[str, str], seed: int, layout: str = "triplets"
             ) -> pa.Table:
    """Canonical columns plus ``_problem`` ('' for a usable row, else where and why it is not)
    and ``_key`` (sampling order). Layout ``e5``: each file is a source and the instruction is
    the E5 table's for its source and line (a row's own instruction field is not read)."""
    own = ("instruction",) if layout == "triplets" else ()
    text_fields = {f: mapping[f] for f in (*REQUIRED_FIELDS, *own) if f in mapping}
    problems, rows = text_problems(table, text_fields, optional=("instruction",))
    out: dict[str, list[Any]] = {f: [r.get(f) for r in rows] for f in (*REQUIRED_FIELDS, "instruction")}
    if layout == "e5":
        if LINE not in table.column_names or "path" not in table.column_names:
            raise LayercutError("data.layout e5 reads JSON-lines files (<source>.jsonl), "
                                "not Parquet")
        out["instruction"] = [e5_instruction(e5_source(path), line, path) for path, line
                              in zip(table["path"].to_pylist(), table[LINE].to_pylist())]
    column = mapping.get("source")
    if layout == "e5":
        out["source"] = [e5_source(path) for path in table["path"].to_pylist()]
    elif column in table.column_names:
        # A label, not model input: any JSON value is kept as its text.
        out["source"] = [None if v is None else str(v) for v in table[column].to_pylist()]
    elif "path" in table.column_names:
        # No source column: each file is one source (a folder of per-dataset files, as E5's).
        out["source"] = [Path(p).name.split(".")[0] for p in table["path"].to_pylist()]
    else:
        out["source"] = [None] * table.num_rows
    keys = []
    for row in range(table.num_rows):
        content = "\0".join(str(out[f][row]) for f in (*REQUIRED_FIELDS, "instruction"))
        digest = hashlib.blake2b(f"{seed}\0{content}".encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big"))
    columns = {f: pa.array(out[f], type=pa.string()) for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}
    columns["_problem"] = pa.array(problems, type=pa.string())
    columns["_key"] = pa.array(keys, type=pa.uint64())
    return pa.table(columns)


def _summarize(table: pa.Table) -> pa.Table:
    problem = np.asarray(table["_problem"].to_pylist(), dtype=object)
    bad = np.flatnonzero(problem != "")
    example = ""
    if len(bad):
        example = problem[bad[0]]
        if " line " not in example.split(":")[0]:  # Parquet: no line number, show the row
            query = table["query"][int(bad[0])].as_py()
            example = f"{example} (row with query {str(query)[:60]!r})"
    return pa.table({"rows": [table.num_rows], "bad": [len(bad)], "example": [example]})


def _smallest_valid(table: pa.Table, count: int) -> pa.Table:
    import pyarrow.compute as pc

    valid = table.filter(pc.equal(table["_problem"], ""))
    if valid.num_rows > count:
        order = pc.sort_indices(valid["_key"])[:count]
        valid = valid.take(order)
    return valid


def _report(summaries: list[dict], path: str, invalid_rows: str) -> dict[str, Any]:
    """What was read, from the per-block summaries; an error if rows are unusable and
    ``invalid_rows`` is 'fail', or if no row is usable."""
    rows = sum(s["rows"] for s in summaries)
    bad = sum(s["bad"] for s in summaries)
    example = next((s["example"] for s in summaries if s["example"]), "")
    if bad and invalid_rows == "fail":
        raise LayercutError(f"{bad} of {rows} rows in {path} are unusable; first: {example}")
    if rows == bad:
        detail = f"; first problem: {example}" if example else ""
        raise LayercutError(f"training data {path} has no usable rows ({rows} read){detail}")
    return {"path": path, "rows": rows, "skipped_rows": bad, "first_problem": example}


def _annotate_rows(path: str, seed: int, columns: dict[str, str] | None, layout: str):
    if layout == "e5":
        check_e5_folder(path)
    dataset, available = read_rows(path)
    mapping = column_mapping(available, columns or {})
    annotated = dataset.map_batches(annotate, batch_format="pyarrow",
                                    fn_kwargs={"mapping": mapping, "seed": seed, "layout": layout})
    return annotated, mapping


def annotated_triplets(path: str, *, seed: int, invalid_rows: str = "skip",
                       columns: dict[str, str] | None = None, layout: str = "triplets"):
    """(Ray Dataset of annotated rows, report of what was read) for the triplets at ``path``.

    ``invalid_rows``: 'skip' drops unusable rows (a field missing, empty or not text, a line
    that is not a JSON object) and counts them; 'fail' stops with an error naming the first one
    by file, line (JSON lines) and field. No usable row at all is always an error.
    ``layout``: 'triplets' or 'e5' (a folder of <source>.jsonl files; tasks/training/e5_data.py).
    """
    annotated, mapping = _annotate_rows(path, seed, columns, layout)
    summaries = take_summaries(annotated, _summarize, path)
    return annotated, {**_report(summaries, path, invalid_rows), "columns": mapping}


_SAMPLED = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS, "_key")


def _summarize_and_keep_smallest(table: pa.Table, count: int) -> pa.Table:
    """One row per batch: its summary (as ``_summarize``) and, as list columns, its ``count``
    usable rows with the smallest keys: the global smallest are among the batches' smallest."""
    summary = _summarize(table)
    valid = _smallest_valid(table, count)
    out = {name: summary[name] for name in summary.column_names}
    for field in _SAMPLED:
        out[field] = pa.array([valid[field].to_pylist()], type=pa.list_(table.schema.field(field).type))
    return pa.table(out)


def sample_triplet_batches(path: str, *, num_batches: int, batch_size: int, seed: int,
                           invalid_rows: str = "skip", columns: dict[str, str] | None = None,
                           layout: str = "triplets"
                           ) -> tuple[list[dict[str, list]], dict[str, Any]]:
    """``num_batches`` batches of ``batch_size`` triplets and a report of what was read.

    Each batch is a dict of lists (query, positive, negative, instruction, source). The data is
    read once: each block reports its counts and its ``num_batches x batch_size`` candidates
    (usable rows with the smallest keys), and the driver keeps the smallest of those.
    """
    annotated, mapping = _annotate_rows(path, seed, columns, layout)
    wanted = num_batches * batch_size
    try:
        parts = annotated.map_batches(_summarize_and_keep_smallest, batch_format="pyarrow",
                                      fn_kwargs={"count": wanted}).take_all()
    except Exception as exc:  # noqa: BLE001
        raise LayercutError(f"cannot read training data {path}: {short_error(exc)}") from exc
    report = {**_report(parts, path, invalid_rows), "columns": mapping}
    usable = report["rows"] - report["skipped_rows"]
    if usable < wanted:
        raise LayercutError(
            f"{path} has {usable} usable rows ({report['skipped_rows']} skipped), fewer than "
            f"num_batches x batch_size = {num_batches} x {batch_size} = {wanted}")
    candidates = [dict(zip(_SAMPLED, values)) for part in parts
                  for values in zip(*(list(part[field]) for field in _SAMPLED))]
    # Key order; rows with equal keys have equal text and are ordered by source, so the sample
    # never depends on the layout.
    candidates.sort(key=lambda row: (int(row["_key"]), str(row["source"])))
    sampled = candidates[:wanted]
    fields = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
    batches = [{f: [row[f] for row in sampled[b * batch_size:(b + 1) * batch_size]] for f in fields}
               for b in range(num_batches)]
    return batches, {**report, "sampled_rows": wanted}


def check_e5_folder(path: str) -> None:
    """A local E5-layout source is a folder of ``<source>.jsonl`` files of known sources (a
    cloud URI is checked file by file as it is read). One line naming the problem otherwise."""
    scheme = urlparse(path).scheme
    if scheme not in ("", "file"):
        return
    local = Path(urlparse(path).path if scheme == "file" else path).expanduser()
    if not local.is_dir():
        raise LayercutError(f"data.layout e5 needs a folder of <source>.jsonl files; {local} "
                            f"{'is a file' if local.exists() else 'does not exist'}")
    files = sorted(p for p in local.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise LayercutError(f"{local} holds no <source>.jsonl files (data.layout e5)")
    unknown = [p.name for p in files if e5_source(p.name) not in E5_INSTRUCTIONS]
    if unknown:
        raise LayercutError(f"{local}: {', '.join(unknown)} not sources of the E5 layout "
                            f"(data.layout e5; sources: {', '.join(E5_INSTRUCTIONS)})")


def has_instructions(path: str, layout: str, columns: dict[str, str] | None = None) -> bool:
    """Whether training rows at ``path`` carry instructions: always for the E5 layout, else when
    the data has an instruction column (its schema: the first rows read)."""
    if layout == "e5":
        return True
    _, available = read_rows(path)
    wanted = (columns or {}).get("instruction") or FIELD_ALIASES["instruction"][0]
    return wanted in available
