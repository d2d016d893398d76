"""Where a run directory lives: a local path, or a URI of an object store (s3://, gs://, ...).

``pathlib.Path`` would fold a URI's '//' into '/' (``Path("s3://b/p")`` is 's3:/b/p'), so a run
directory under a URI stays a string, joined with '/'. Imports no third-party package: the schemas
use it.
"""

from __future__ import annotations

from pathlib import Path

from tasks.object_store import is_uri

__all__ = ["is_uri", "run_path"]


def run_path(output_dir: str, name: str) -> Path | str:
    """The run directory ``name`` inside ``output_dir``: a Path, or 'scheme://.../name' for a URI."""
    if is_uri(output_dir):
        return f"{output_dir.rstrip('/')}/{name}"
    return Path(output_dir) / name
