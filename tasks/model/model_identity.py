"""What a model *is*, for keying results: its content, never its folder name.

Two fine-tuned artifacts are both folders named ``model``; results keyed by the folder name
(or path) would pass one model's scores off as the other's. The identity of a source is:

- a local directory: sha256 over the name and content of its config, tokenizer and weight files,
- a built-in or GGUF source: its converted directory's name, which carries the GGUF's cache key
  (``tasks.model.models._gguf_cache_dir``), so the converted weights are not hashed on every run,
- a hub id: the commit its revision resolves to (from the local hub cache, else the hub).

A file's digest is cached under the layercut cache keyed by its path, size and mtime, so a large
model's weights are read once, not on every evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.atomic_files import write_atomic
from tasks.errors import LayercutError
from tasks.model.models import ModelSource, cache_root

# Files that decide what a model directory computes: config, tokenizer (vocabulary, merges, chat
# template), weights, and a sentence-transformers directory's module configs and code.
IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".jinja", ".model", ".txt", ".py")
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of ``path``'s bytes, read in 1 MiB chunks; cached by (path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    record = cache_root() / "digests" / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        cached = json.loads(record.read_text())
        if {k: cached.get(k) for k in key} == key:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    try:  # the cache only saves time: a failed write costs a re-hash next time, nothing else
        write_atomic(record, json.dumps({**key, "sha256": digest.hexdigest()}))
    except OSError:
        pass
    return digest.hexdigest()


def directory_identity(folder: Path) -> str:
    """sha256 over (relative name, content digest) of the files that decide what ``folder``'s
    model computes (top level and one level of subfolders, e.g. 1_Pooling/config.json)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix in IDENTITY_SUFFIXES
                   and len(p.relative_to(folder).parts) <= 2
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise LayercutError(f"model directory {folder} holds no config or weight files")
    listing = "\n".join(f"{p.relative_to(folder).as_posix()}:{file_sha256(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def hub_commit(repo: str, revision: str | None) -> str:
    """The commit ``revision`` (default: main) of hub model ``repo`` resolves to."""
    from transformers.utils import cached_file

    try:
        config = Path(cached_file(repo, "config.json", revision=revision))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayercutError(f"cannot resolve hub model {repo!r} at revision "
                            f"{revision or 'main'}: {first}") from exc
    if config.parent.parent.name != "snapshots":
        raise LayercutError(f"cannot tell which commit of {repo!r} {revision or 'main'} is")
    return config.parent.name


def model_identity(source: ModelSource, revision: str | None = None) -> str:
    """A string that changes whenever the model's weights or configuration change (see module)."""
    path = Path(source.path)
    if not source.is_local:
        return f"hub:{source.path}@{hub_commit(source.path, revision)}"
    if path.parent == cache_root() / "converted":
        return f"gguf:{path.name}"
    return f"sha256:{directory_identity(path)}"
