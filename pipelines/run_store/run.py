"""One run directory: its files, its fingerprint guard, its finished result, its unit stores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipelines.run_store.files import RunFiles
from pipelines.run_store.guard import FingerprintGuard
from pipelines.run_store.items import JSON, Codec, ItemStore
from pipelines.run_store.location import is_uri


class RunStore:
    """A stage's run directory ``root`` (created by ``create``): a local path, or a URI
    ('s3://bucket/runs/x', pipelines/run_store/object_store.py) with the same guarantees.

    ``files`` reads and writes inside it (atomically); ``guard(name)`` is a record of what
    computed its results; ``finished`` returns a stored result a rerun can hand back instead of
    working again; ``items`` is a store of finished units (batches, chunks, tasks) for resume.
    """

    def __init__(self, root: Path | str):
        if is_uri(root):
            from pipelines.run_store.object_store import ObjectStoreFiles

            self.files = ObjectStoreFiles(str(root))
        else:
            self.files = RunFiles(root)

    @property
    def root(self) -> Path | str:
        return self.files.root

    def __str__(self) -> str:
        return str(self.root)

    def create(self) -> "RunStore":
        self.files.create()
        return self

    def record_config(self, config) -> None:
        """config.yaml: the validated config the run used, as YAML (pipelines/config.py)."""
        from pipelines.config import dump_config

        self.files.write_text("config.yaml", dump_config(config))

    def guard(self, name: str = "fingerprint.json") -> FingerprintGuard:
        return FingerprintGuard(self.files, name)

    def items(self, folder: str, template: str = "{key}.json", codec: Codec = JSON) -> ItemStore:
        return ItemStore(self.files, folder, template, codec)

    def finished(self, name: str, fingerprint: str | None = None, requires: tuple[str, ...] = (),
                 announce: bool = True) -> dict[str, Any] | None:
        """The stored result ``name`` (JSON) when the run is finished, else None.

        Finished: ``name`` exists, every file of ``requires`` exists (e.g. the exported model),
        and, when ``fingerprint`` is given, the result's own "fingerprint" key equals it (a
        result of other settings is not this run's). With ``announce``, says so on stderr.
        """
        if not self.files.exists(name) or not all(self.files.exists(other) for other in requires):
            return None
        result = self.files.read_json(name)
        if fingerprint is not None and result.get("fingerprint") != fingerprint:
            return None
        if announce:
            self.announce_finished()
        return result

    def announce_finished(self) -> None:
        """Say on stderr that the run is finished (for a caller that first checks the stored
        result, ``finished(..., announce=False)``)."""
        print(f"layercut: {self.root} is finished; nothing to do", file=sys.stderr)

    def save_result(self, name: str, result: dict[str, Any]) -> None:
        """The run's result, written last: once it exists, ``finished`` returns it."""
        self.files.write_json(name, result)
