"""Object stores (s3://, gs://, any URI pyarrow opens) as layercut meets them: telling a URI from
a local path, a URI's pyarrow filesystem that keeps working in the processes it is pickled into,
the manifest that marks a directory uploaded whole, and a model directory fetched from a store
into a local cache (transformers and sentence-transformers load through paths).

The run store writes to object stores (pipelines/run_store/object_store.py); training data is
read from them through Ray Data (tasks/training/data.py). Credentials and endpoint come from the
environment (``AWS_*``, Google's application default credentials), as for any pyarrow client.

Why a filesystem must be portable: Ray Train's controller and workers, Ray Data's read tasks and
the export task are other processes, possibly on other nodes, started before (and without) the
driver's environment. pyarrow pickles an S3 filesystem's endpoint, region and options, but its
keys only when they were given explicitly: one built from the driver's ``AWS_*`` variables
arrives there as "use the default credential chain", finds none and is refused (ACCESS_DENIED
from Ray Train's workers, measured against moto). So when the driver has ``AWS_ACCESS_KEY_ID``
and ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), ``filesystem_of`` gives them
explicitly and they travel with the filesystem (inside Ray's object store, as env_vars of a
runtime environment would). They are a snapshot: temporary keys expire there when they expire
for the driver (a rerun resumes with fresh ones). Without them (an instance role,
``AWS_PROFILE``), and for gs:// (application default credentials), every process resolves its
own, as any client does. Imports pyarrow only when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError

# Written last into a directory uploaded whole: its files' names, relative to it. A directory
# holding layercut.json (an exported model) but no manifest is an upload that did not finish.
MANIFEST = ".layercut-complete.json"
# In a fetched copy: the URI and the (name, size, mtime) of each object it was fetched from.
SOURCE_RECORD = ".layercut-source.json"

LOCAL_SCHEMES = ("", "file")
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# What any process needs to open an s3:// URI itself: keys, region, endpoint (an S3-compatible
# server). AWS_PROFILE and instance roles are not copied: each node resolves those on its own.
ENVIRONMENT = (*KEYS, "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3")

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names an object store or other remote filesystem (``s3://b/p``),
    not a local path. ``file://`` and Windows drive letters ('C:\\runs') count as local."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(str(location)).scheme
    return scheme not in LOCAL_SCHEMES and len(scheme) > 1 and "://" in str(location)


def filesystem_of(uri: str) -> tuple[FileSystem, str]:
    """(filesystem, path on it) of ``uri`` ('s3://bucket/runs/x' -> (S3FileSystem, 'bucket/runs/x')),
    carrying the driver's S3 keys when it is pickled (module docstring).

    Raises:
        OSError, ValueError: pyarrow's, for an unknown scheme or a malformed URI.
    """
    from pyarrow.fs import FileSystem, S3FileSystem

    filesystem, path = FileSystem.from_uri(uri)
    if isinstance(filesystem, S3FileSystem) and all(os.environ.get(key) for key in KEYS):
        # pyarrow's own pickled form is every option the URI and environment resolved to
        # (endpoint, region, scheme, timeouts, query parameters); only the keys are added.
        options = dict(filesystem.__reduce__()[1][0])
        options.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                       secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                       session_token=os.environ.get("AWS_SESSION_TOKEN") or None)
        options["region"] = options["region"] or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or ""
        filesystem = S3FileSystem(**options)
    return filesystem, path


def store_environment() -> dict[str, str]:
    """{name: value} of this process's ``ENVIRONMENT`` variables that are set: what a process Ray
    started without them (a sweep's trial, which runs whole stages that open their run
    directories by URI) sets before it reaches the store. A snapshot, like the keys above."""
    return {name: os.environ[name] for name in ENVIRONMENT if os.environ.get(name)}


def fetch_directory(uri: str, cache: Path) -> Path:
    """The model directory ``uri`` as a local directory under ``cache``, downloaded on first use;
    reused as long as every object's name, size and modification time are the same, and when the
    store's copy changed (a new card, another export to the same URI), rebuilt with only the
    changed objects downloaded again. Safe across processes (a file lock; the copy appears whole
    or not at all).

    Which objects: those the directory's manifest lists when it has one (a layercut export),
    else every object under ``uri`` (a model uploaded by other means).

    Raises:
        LayercutError: one line naming ``uri``: the store refused or did not answer, nothing is
            there, a layercut export whose upload did not finish, or no config.json.
    """
    from filelock import FileLock
    from pyarrow.fs import FileSelector, FileType

    uri = uri.rstrip("/")
    try:
        fs, base = filesystem_of(uri)
        found = fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as error:
        raise LayercutError(f"model {uri}: {first_line(error)} (credentials and endpoint come "
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
        previous = _recorded(target)
        if previous == record:
            return target
        # Objects the store still holds unchanged (a sweep rewrites only the model card) come
        # from the old copy, linked, not downloaded again: a 7B model's shards are 15 GB.
        unchanged = {tuple(entry) for entry in (previous or {}).get("objects", [])
                     if previous.get("uri") == uri}
        with staged_directory(target) as staging:
            for name, size, mtime in record["objects"]:
                local = staging / name
                local.parent.mkdir(parents=True, exist_ok=True)
                if (name, size, mtime) in unchanged and (target / name).is_file():
                    _link_or_copy(target / name, local)
                    continue
                with fs.open_input_stream(f"{base}/{name}") as source, open(local, "wb") as copy:
                    shutil.copyfileobj(source, copy, 16 << 20)  # shards are GBs: never whole in memory
            (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link of ``source`` (the staging directory is beside the copy, on the
    same filesystem), or a copy where the filesystem has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _recorded(target: Path) -> dict | None:
    try:
        return json.loads((target / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
