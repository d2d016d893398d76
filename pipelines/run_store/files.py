"""The files of one run directory, named relative to it, every write atomic.

``RunFiles`` is the only part of the run store that touches a filesystem: guards, finished
results and item stores go through its methods, never through ``open`` or ``Path``. It is a
local directory; ``ObjectStoreFiles`` (object_store.py) implements the same methods on a
pyarrow filesystem (s3://, gs://). A writer that wants a local path (mteb's result cache, a
plot, transformers' save_pretrained) writes into ``staged_file`` / ``staged_directory`` or a
scratch directory of its own and hands the bytes over; a writer that takes a pyarrow filesystem
(Ray Train's storage) asks for ``storage(name)``; work done in another process (a Ray task) gets
``for_task()``.

The module functions (``write_atomic``, ``write_json``, ``write_csv``) write one file at an
absolute path, for outputs outside a run's own files (the report, plots, a model card).
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tasks.atomic_files import staged_directory, staged_file, write_atomic

__all__ = ["RunFiles", "csv_text", "json_text", "write_atomic", "write_csv", "write_json"]


def json_text(payload: Any) -> str:
    """How every JSON file of a run is written: indented, keys in insertion order, one newline."""
    return json.dumps(payload, indent=2, sort_keys=False) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json_text(payload))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_atomic(path, csv_text(header, rows))


class RunFiles:
    """Files under ``root``, named by relative POSIX paths ('batches/batch-00001.json').

    Reads raise what the filesystem raises (FileNotFoundError for a missing name); writes
    create parent folders and replace a file whole (a crash mid-write leaves the old one)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def storage(self, name: str) -> tuple[Any, str]:
        """(pyarrow filesystem or None, path) of ``name`` for a writer that takes both (Ray
        Train's ``storage_filesystem`` and ``storage_path``): here None and the absolute path,
        so the writer resolves its own local filesystem."""
        return None, str((self.root / name).resolve())

    def where(self, name: str) -> str:
        """How a user or another program names ``name``: its absolute path."""
        return str((self.root / name).resolve())

    def for_task(self) -> "RunFiles":
        """These files as another process reaches them (a Ray task, whose working directory
        is not the driver's): the same directory by its absolute path."""
        return RunFiles(self.root.resolve())

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def names(self, folder: str, pattern: str = "*") -> list[str]:
        """Sorted names (relative to the root) of the entries of ``folder`` matching ``pattern``."""
        return sorted((self.root / folder / path.name).relative_to(self.root).as_posix()
                      for path in (self.root / folder).glob(pattern))

    def tree(self, folder: str) -> list[str]:
        """Sorted names (relative to the root) of every file under ``folder``, at any depth."""
        return sorted(path.relative_to(self.root).as_posix()
                      for path in (self.root / folder).rglob("*") if path.is_file())

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def read_text(self, name: str) -> str:
        return (self.root / name).read_text()

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_text(name))

    def write_text(self, name: str, data: str | bytes) -> None:
        write_atomic(self.root / name, data)

    def write_json(self, name: str, payload: Any) -> None:
        self.write_text(name, json_text(payload))

    def write_csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.write_text(name, csv_text(header, rows))

    @contextmanager
    def staged_file(self, name: str) -> Iterator[Path]:
        """A local staging path that becomes ``name`` when the block ends without an error."""
        with staged_file(self.root / name) as staging:
            yield staging

    @contextmanager
    def staged_directory(self, name: str) -> Iterator[Path]:
        """A local staging directory that replaces ``name`` whole when the block succeeds."""
        with staged_directory(self.root / name) as staging:
            yield staging
