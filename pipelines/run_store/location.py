"""Where a run directory lives: a local path, or a URI of an object store (s3://, gs://, ...).

``pathlib.Path`` would fold a URI's '//' into '/' (``Path("s3://b/p")`` is 's3:/b/p'), so a run
directory under a URI stays a string, joined with '/'. Imports nothing: the schemas use it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

LOCAL_SCHEMES = ("", "file")


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names an object store or other remote filesystem (``s3://b/p``),
    not a local path. ``file://`` and Windows drive letters ('C:\\runs') count as local."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(str(location)).scheme
    return scheme not in LOCAL_SCHEMES and len(scheme) > 1 and "://" in str(location)


def run_path(output_dir: str, name: str) -> Path | str:
    """The run directory ``name`` inside ``output_dir``: a Path, or 'scheme://.../name' for a URI."""
    if is_uri(output_dir):
        return f"{output_dir.rstrip('/')}/{name}"
    return Path(output_dir) / name
