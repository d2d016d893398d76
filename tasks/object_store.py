"""Object stores (s3://, gs://, any URI pyarrow opens) as tasks/ meets them: telling a URI from a
local path, the manifest that marks a directory uploaded whole, and a model directory fetched
from a store into a local cache (transformers and sentence-transformers load through paths).

The run store writes to object stores (pipelines/run_store/object_store.py); this module only
reads. Credentials and endpoint come from the environment (``AWS_*``, Google's application
default credentials), as for any pyarrow client. Imports pyarrow only when called.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError

# Written last into a directory uploaded whole: its files' names, relative to it. A directory
# holding layercut.json (an exported model) but no manifest is an upload that did not finish.
MANIFEST = ".layercut-complete.json"
# In a fetched copy: the URI and the (name, size, mtime) of each object it was fetched from.
SOURCE_RECORD = ".layercut-source.json"

LOCAL_SCHEMES = ("", "file")


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names an object store or other remote filesystem (``s3://b/p``),
    not a local path. ``file://`` and Windows drive letters ('C:\\runs') count as local."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(str(location)).scheme
    return scheme not in LOCAL_SCHEMES and len(scheme) > 1 and "://" in str(location)


def fetch_directory(uri: str, cache: Path) -> Path:
    """The model directory ``uri`` as a local directory under ``cache``, downloaded on first use
    and again whenever the store's copy changed (another export to the same URI); reused as long
    as every object's name, size and modification time are the same. Safe across processes (a
    file lock; the copy appears whole or not at all).

    Which objects: those the directory's manifest lists when it has one (a layercut export),
    else every object under ``uri`` (a model uploaded by other means).

    Raises:
        LayercutError: one line naming ``uri``: the store refused or did not answer, nothing is
            there, a layercut export whose upload did not finish, or no config.json.
    """
    from filelock import FileLock
    from pyarrow.fs import FileSelector, FileSystem, FileType

    uri = uri.rstrip("/")
    try:
        fs, base = FileSystem.from_uri(uri)
        found = fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as error:
        raise LayercutError(f"model {uri}: {_first_line(error)} (credentials and endpoint come "
                            "from AWS_* variables, see README)") from None
    objects = {info.path[len(base) + 1:]: info for info in found if info.type == FileType.File}
    if not objects:
        raise LayercutError(f"model {uri}: no objects there")
    if MANIFEST in objects:
        with fs.open_input_stream(f"{base}/{MANIFEST}") as stream:
            names = json.loads(stream.read())["files"]
        missing = sorted(set(names) - set(objects))
        if missing:
            raise LayercutError(f"model {uri}: its manifest lists files the store lacks "
                                f"({', '.join(missing[:3])}); export it again")
    elif "layercut.json" in objects:
        raise LayercutError(f"model {uri}: its upload did not finish (no {MANIFEST}); rerun the "
                            "layercut command that exported it")
    else:
        names = sorted(objects)
    if "config.json" not in names:
        raise LayercutError(f"model {uri} has no config.json")
    record = {"uri": uri, "objects": [[name, objects[name].size, objects[name].mtime_ns] for name in sorted(names)]}

    label = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.rsplit("/", 1)[-1]).strip("-") or "model"
    target = cache / f"{label}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if _recorded(target) == record:
            return target
        with staged_directory(target) as staging:
            for name in record["objects"]:
                local = staging / name[0]
                local.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(f"{base}/{name[0]}") as source, open(local, "wb") as copy:
                    shutil.copyfileobj(source, copy, 16 << 20)  # shards are GBs: never whole in memory
            (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return target


def _recorded(target: Path) -> dict | None:
    try:
        return json.loads((target / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
