"""JSON lines through Ray Data, one line at a time, so one bad line is one bad row.

Ray Data's ``read_json`` hands a whole file to pyarrow, which types each column from the first
rows: a single number in a text column (``"positive": 1945``) makes it refuse the file, and its
fallback (``json.load`` of the whole file) then reports "Extra data: line 2 column 1", a wrong
cause, for the whole file. Here every line is parsed by itself and every column is text:

- a string stays as it is, ``null`` (or a missing key) is null;
- any other value (number, bool, list, object) becomes its JSON text, and its field and JSON type
  are listed in the row's ``_not_text`` column ({"positive": "number"} as JSON, '' when none),
  so readers decide per field whether that is a bad row or fine (a label "3");
- a line that is not a JSON object becomes a row whose ``_unparsable`` column says why;
- ``_line`` is the 1-based line number in its file (the item number for a file holding one JSON
  array), so a bad row is named by file and line.

Blank lines are ignored; a line that is not UTF-8 is a bad row too. ``.gz`` files are decompressed by Ray Data.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

NOT_TEXT = "_not_text"
UNPARSABLE = "_unparsable"
LINE = "_line"
_CHUNK_ROWS = 8192  # rows per output block; lines are parsed as they stream in


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type ('number', 'boolean', 'array', 'object', ...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else "null"


def rows_to_table(rows: list[tuple[int, Any, str]]) -> pa.Table:
    """(line number, parsed value, parse error or '') triples -> a table of text columns."""
    keys: dict[str, None] = {}
    for _, value, _ in rows:
        if isinstance(value, dict):
            keys.update(dict.fromkeys(value))
    columns: dict[str, list] = {key: [] for key in keys}
    not_text, unparsable, lines = [], [], []
    for line, value, error in rows:
        lines.append(line)
        if not error and not isinstance(value, dict):
            error = f"a JSON {json_type(value)}, not an object"
        unparsable.append(error)
        value = value if isinstance(value, dict) and not error else {}
        flagged: dict[str, str] = {}
        for key in keys:
            item = value.get(key)
            if item is not None and not isinstance(item, str):
                flagged[key] = json_type(item)
                item = json.dumps(item, ensure_ascii=False)
            columns[key].append(item)
        not_text.append(json.dumps(flagged) if flagged else "")
    table = {key: pa.array(values, type=pa.string()) for key, values in columns.items()}
    table[NOT_TEXT] = pa.array(not_text, type=pa.string())
    table[UNPARSABLE] = pa.array(unparsable, type=pa.string())
    table[LINE] = pa.array(lines, type=pa.int64())
    return pa.table(table)


def _parse(text: str) -> tuple[Any, str]:
    try:
        return json.loads(text), ""
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"


def parse_lines(lines: Iterator[bytes]) -> Iterator[pa.Table]:
    """Tables of at most ``_CHUNK_ROWS`` rows from the lines of one file (or one JSON array)."""
    lines = iter(lines)
    rows: list[tuple[int, Any, str]] = []
    first = True
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:  # a bad row, never text with replaced characters
            first = False
            rows.append((number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if not text:
            continue
        if first and text.startswith("["):
            # A file holding one JSON array (which read_json accepted too): items by number.
            try:
                items, error = _parse("\n".join([text, *(r.decode("utf-8") for r in lines)]))
            except UnicodeDecodeError as exc:
                items, error = None, f"not UTF-8 ({exc.reason})"
            if error or not isinstance(items, list):
                yield rows_to_table([(number, None, error or "not a JSON array or JSON lines")])
                return
            for start in range(0, len(items), _CHUNK_ROWS):
                yield rows_to_table([(start + k + 1, item, "") for k, item
                                     in enumerate(items[start:start + _CHUNK_ROWS])])
            return
        first = False
        rows.append((number, *_parse(text)))
        if len(rows) >= _CHUNK_ROWS:
            yield rows_to_table(rows)
            rows = []
    if rows:
        yield rows_to_table(rows)


class JsonLinesDatasource(FileBasedDatasource):
    """Ray Data source of JSON-lines files as text columns plus ``_not_text``, ``_unparsable``
    and ``_line`` (see the module docstring)."""

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        yield from parse_lines(_lines_of(f))


def _lines_of(f) -> Iterator[bytes]:
    pending = b""
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        yield from complete
    if pending:
        yield pending


def read_json_lines(paths: str, **kwargs):
    """A Ray Dataset over JSON-lines ``paths`` (file or folder; kwargs as for read_json)."""
    import ray.data

    return ray.data.read_datasource(JsonLinesDatasource(paths, **kwargs))
