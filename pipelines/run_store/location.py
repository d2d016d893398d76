"""Where a run directory lives: a local path, or a URI of an object store (s3://, gs://, ...).

``pathlib.Path`` would fold a URI's '//' into '/' (``Path("s3://b/p")`` is 's3:/b/p'), so a run
directory under a URI stays a string, joined with '/'. Imports no third-party package: the schemas
use it.
"""

from __future__ import annotations

from pathlib import Path

from tasks.object_store import is_uri

__all__ = ["absolute", "is_uri", "parent", "run_path"]


def run_path(output_dir: Path | str, name: str) -> Path | str:
    """The run directory ``name`` inside ``output_dir``: a Path, or 'scheme://.../name' for a URI.
    ``name`` may hold '/' ('trials/tiny-l6')."""
    if is_uri(output_dir):
        return f"{str(output_dir).rstrip('/')}/{name}"
    return Path(output_dir) / name


def absolute(location: Path | str) -> Path | str:
    """A local directory made absolute (``Path.resolve``: the form other processes and reports
    see); a URI as it is."""
    return location if is_uri(location) else Path(location).resolve()


def parent(location: Path | str) -> Path | str:
    """The directory holding ``location``: ``Path.parent``, or the URI up to its last '/'."""
    if is_uri(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return Path(location).parent
