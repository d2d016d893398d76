"""Files and directories that appear whole or not at all.

A reader, or a rerun after a crash, never sees half of one: everything is written beside its
target under a hidden staging name and renamed into place (``os.replace``, atomic on one
filesystem). The run store (pipelines/run_store/) builds on these; tasks/ uses them directly for
the directories it writes itself (the exported artifact, a converted GGUF model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path``; its parent folders are created.

    The old file, if any, stays whole until the new one is complete and flushed to disk."""
    with staged_file(path) as staging:
        with open(staging, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A staging path beside ``path`` for a writer that wants a file name (``np.savez``, mteb's
    ``to_disk``); renamed onto ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """An empty staging directory beside ``target``, swapped in whole when the block ends
    without an error (a previous ``target`` is replaced, never merged), removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            # Two renames: for a moment there is no target, but never a half-written one.
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
