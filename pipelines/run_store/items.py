"""Finished units of a run, one file each, for resume: stage 1's batches, the classifier's
chunks of test rows, evaluation's per-task items. A unit's file exists only complete (written
through RunFiles), so a rerun skips exactly the units that finished.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

from pipelines.run_store.files import RunFiles, json_text


@dataclass(frozen=True)
class Codec:
    """How a unit's value becomes the bytes of its file, and back."""

    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def _npz_encode(arrays: dict[str, Any]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npz_decode(data: bytes) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(data)) as archive:
        return {name: archive[name] for name in archive.files}


JSON = Codec(lambda value: json_text(value).encode(), lambda data: json.loads(data))
NPZ = Codec(_npz_encode, _npz_decode)  # {name: numpy array}: np.savez's format


class ItemStore:
    """Units named by a key under ``folder``: ``template.format(key=key)`` is a unit's file name
    (e.g. 'batch-{key:05d}.json', '{key}.json').

    Args:
        files: the run directory's files.
        folder: where the units live, relative to the run directory.
        template: a unit's file name, with ``{key}``.
        codec: JSON (default) or NPZ.
    """

    def __init__(self, files: RunFiles, folder: str, template: str = "{key}.json", codec: Codec = JSON):
        self.files, self.folder, self.template, self.codec = files, folder, template, codec

    def name(self, key: Hashable) -> str:
        return f"{self.folder}/{self.template.format(key=key)}"

    def has(self, key: Hashable) -> bool:
        return self.files.exists(self.name(key))

    def done(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """The keys among ``keys`` whose unit is stored, in their order."""
        return [key for key in keys if self.has(key)]

    def any(self, pattern: str = "*") -> bool:
        """Whether the folder holds any unit file matching ``pattern`` (for a guard's has_results)."""
        return bool(self.files.names(self.folder, pattern))

    def load(self, key: Hashable) -> Any:
        return self.codec.decode(self.files.read_bytes(self.name(key)))

    def save(self, key: Hashable, value: Any) -> None:
        self.files.write_text(self.name(key), self.codec.encode(value))
