"""A pyarrow filesystem for a URI that keeps working in the other processes it is pickled into.

Ray Train's controller and workers, and the export task, are other processes, possibly on other
nodes, started before (and without) the driver's environment. pyarrow pickles an S3
filesystem's endpoint, region and options, but its keys only when they were given explicitly:
one built from the driver's ``AWS_*`` variables arrives there as "use the default credential
chain", finds none and is refused (ACCESS_DENIED from Ray Train's workers, measured against
moto). So when the driver has ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (and
``AWS_SESSION_TOKEN``), they are given explicitly here and travel with the filesystem (inside
Ray's object store, as env_vars of a runtime environment would). They are a snapshot: temporary
keys expire there when they expire for the driver (a rerun resumes with fresh ones). Without
them (an instance role, ``AWS_PROFILE``), and for gs:// (application default credentials),
every process resolves its own, as any client does. Imports pyarrow only when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


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


# What any process needs to open an s3:// URI itself: keys, region, endpoint (an S3-compatible
# server). AWS_PROFILE and instance roles are not copied: each node resolves those on its own.
ENVIRONMENT = (*KEYS, "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3")


def store_environment() -> dict[str, str]:
    """{name: value} of this process's ``ENVIRONMENT`` variables that are set: what a process Ray
    started without them (a sweep's trial, which runs whole stages that open their run
    directories by URI) sets before it reaches the store. A snapshot, like the keys above."""
    return {name: os.environ[name] for name in ENVIRONMENT if os.environ.get(name)}
