"""A run directory on an object store (s3://, gs://, any URI pyarrow's filesystems open).

``ObjectStoreFiles`` has ``RunFiles``' methods and guarantees, built on what an object store
offers: it has no rename, but one upload of a whole object is atomic (a reader sees the old
object or the new one, never part of either; an upload that dies before it completes leaves
nothing visible, single PUT or multipart alike). So every write is one upload of complete
bytes: a writer that wants a file name writes to a local temporary file first, and its bytes
go up once the block succeeded. A directory that must appear whole (``staged_directory``) gets
a manifest object written after all its files: ``exists(directory)`` is true only with the
manifest, so a rerun never trusts a half-uploaded directory.

Credentials and endpoint come from the environment, as for any pyarrow / AWS SDK client:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for an S3-compatible server; for gs://, Google's application default
credentials. Query parameters of the URI (``?region=...&endpoint_override=...``) work too. The
filesystem carries the driver's S3 keys when pickled (tasks/object_store.py), so ``for_task()`` is the
same object and ``storage(name)`` hands Ray Train a filesystem its other processes can use.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipelines.run_store.files import RunFiles, json_text
from tasks.errors import LayercutError
from tasks.object_store import MANIFEST, filesystem_of, first_line  # MANIFEST: a whole directory's, written last


class ObjectStoreFiles(RunFiles):
    """Files under the URI ``root`` ('s3://bucket/runs/layer-loss-x'), named like ``RunFiles``'.

    Reads raise FileNotFoundError for a missing name, as a local directory does. Other
    failures of the store (no such bucket, access denied, unreachable endpoint) surface as
    ``LayercutError`` from ``create``, the first access of a run.
    """

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        try:
            self.fs, self.base = filesystem_of(self.root)
        except (OSError, ValueError) as error:  # unknown scheme, a malformed URI
            raise LayercutError(f"output directory {self.root}: {first_line(error)}") from None
        self.base = self.base.rstrip("/")

    def __str__(self) -> str:
        return self.root

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def storage(self, name: str) -> tuple[Any, str]:
        """(this store's pyarrow filesystem, the path of ``name`` on it): Ray Train writes there
        itself, from any process (the filesystem pickles with its endpoint and keys)."""
        return self.fs, self._path(name)

    def where(self, name: str) -> str:
        """The URI of ``name`` ('s3://bucket/runs/x/model')."""
        return f"{self.root}/{name}"

    def for_task(self) -> "ObjectStoreFiles":
        """Itself: it pickles whole, its filesystem with the driver's endpoint and keys."""
        return self

    def create(self) -> None:
        """Check that the store answers and the bucket exists (object stores have no folders).

        Raises:
            LayercutError: the bucket does not exist, or the store refused or did not answer;
                one line naming the URI and what the store said.
        """
        from pyarrow.fs import FileType

        bucket = self.base.split("/", 1)[0]
        try:
            found = self.fs.get_file_info(bucket).type
        except OSError as error:
            raise LayercutError(f"output directory {self.root}: {first_line(error)} (credentials "
                                "and endpoint come from AWS_* variables, see README)") from None
        if found == FileType.NotFound:
            raise LayercutError(f"output directory {self.root}: bucket {bucket} does not exist; "
                                "create it first")

    def exists(self, name: str) -> bool:
        """Whether the object ``name`` exists, or the directory ``name`` is complete (its manifest)."""
        from pyarrow.fs import FileType

        infos = self.fs.get_file_info([self._path(name), self._path(f"{name}/{MANIFEST}")])
        return infos[0].type == FileType.File or infos[1].type == FileType.File

    def names(self, folder: str, pattern: str = "*") -> list[str]:
        """Sorted names (relative to the root) of the objects and sub-folders directly in ``folder``."""
        from pyarrow.fs import FileSelector

        selector = FileSelector(self._path(folder), allow_not_found=True)
        found = (info.base_name for info in self.fs.get_file_info(selector))
        return sorted(f"{folder}/{base}" if folder else base
                      for base in found if fnmatch.fnmatchcase(base, pattern))

    def tree(self, folder: str) -> list[str]:
        """Sorted names (relative to the root) of every object under ``folder``, at any depth
        (directory manifests and the folder markers a store may keep left out)."""
        from pyarrow.fs import FileSelector, FileType

        selector = FileSelector(self._path(folder), allow_not_found=True, recursive=True)
        return sorted(info.path[len(self.base) + 1:] for info in self.fs.get_file_info(selector)
                      if info.type == FileType.File and info.base_name != MANIFEST)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as stream:
            return stream.read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_text(self, name: str, data: str | bytes) -> None:
        """Upload ``data`` whole as ``name`` (replacing it in one step)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        # The complete bytes in one write: closing the stream (which completes the upload, even
        # on the way out of an exception) can never publish part of them.
        with self.fs.open_output_stream(self._path(name)) as stream:
            stream.write(payload)

    @contextmanager
    def staged_file(self, name: str) -> Iterator[Path]:
        """A local temporary file, uploaded as ``name`` when the block ends without an error."""
        with tempfile.TemporaryDirectory(prefix="layercut-upload-") as scratch:
            staging = Path(scratch) / Path(name).name  # keeps the suffix (writers infer formats)
            yield staging
            self.write_text(name, staging.read_bytes())

    @contextmanager
    def staged_directory(self, name: str) -> Iterator[Path]:
        """A local temporary directory that replaces the directory ``name`` when the block succeeds.

        The old manifest goes first (from then on ``exists(name)`` is false), then the old
        objects, then each new file, and the new manifest last: a crash anywhere in between
        leaves a directory that ``exists`` calls absent, so a rerun writes it again. Each file
        is streamed up (a model's shards are GBs: never held in memory whole)."""
        with tempfile.TemporaryDirectory(prefix="layercut-upload-") as scratch:
            yield Path(scratch)
            files = sorted(path.relative_to(scratch).as_posix()
                           for path in Path(scratch).rglob("*") if path.is_file())
            self._delete_tree(name)
            for relative in files:
                self._stream(f"{name}/{relative}", Path(scratch) / relative)
            self.write_text(f"{name}/{MANIFEST}", json_text({"files": files}))

    def _stream(self, name: str, local: Path) -> None:
        """Upload the local file ``local`` as ``name`` in pieces of 16 MiB. An error mid-way can
        publish part of it (closing the stream completes the upload), so only a staged
        directory's files go this way: the directory counts only with its manifest."""
        with open(local, "rb") as source, self.fs.open_output_stream(self._path(name)) as stream:
            shutil.copyfileobj(source, stream, 16 << 20)

    def _delete_tree(self, name: str) -> None:
        from pyarrow.fs import FileType

        manifest = self._path(f"{name}/{MANIFEST}")
        if self.fs.get_file_info(manifest).type == FileType.File:
            self.fs.delete_file(manifest)
        if self.fs.get_file_info(self._path(name)).type == FileType.Directory:
            self.fs.delete_dir_contents(self._path(name))

