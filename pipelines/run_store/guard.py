"""The fingerprint guard: a run directory only holds results of one configuration.

A stage lists what decides its numbers (``settings``: JSON, e.g. model, data, loss; never where
or how fast the work runs). Its fingerprint is ``digest(settings)`` (pipelines/fingerprints.py).
The record of the settings that computed a directory's results sits beside them; a run with
other settings is refused in one line that names what differs, so results of two
configurations are never mixed and finished work is never overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipelines.fingerprints import describe_difference, digest
from pipelines.run_store.files import RunFiles
from tasks.errors import LayercutError


@dataclass(frozen=True)
class Record:
    """What computed a directory's results: the fingerprint, and the settings behind it (None
    in records written before settings were kept: then only the fingerprints can be named)."""

    fingerprint: str
    settings: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # a stage's own fields (evaluation's "tasks")


@dataclass(frozen=True)
class Refusal:
    """The words of a stage's refusal: 'run directory <dir> holds <what> <differs> (...); <fix>'.

    ``what``: 'results', 'a run'; ``differs``: 'with a different configuration'; ``fix``: what
    the user can do ('use another --name or delete it')."""

    what: str
    differs: str
    fix: str


def check(where: RunFiles | str, recorded: Record | None, settings: dict[str, Any], *,
          has_results: bool, refusal: Refusal, force: bool = False,
          fingerprint: str | None = None) -> None:
    """Refuse results of other settings: ``fingerprint`` (default ``digest(settings)``) must be
    the recorded one. A stage whose fingerprint is not the digest of the settings it describes
    (the sweep's, kept as it was) passes both.

    Nothing is refused when the directory holds no results yet (a run that stopped before its
    first result guards nothing: a fixed config may follow) or with ``force``.

    Raises:
        LayercutError: results exist but no record says what computed them, or the record's
            fingerprint is not ``fingerprint``; one line naming the directory, the two
            fingerprints and (when the record has settings) each differing key.
    """
    if not has_results or force:
        return
    if recorded is None:
        raise LayercutError(f"run directory {where} holds {refusal.what} without a fingerprint of "
                            f"what computed them; {refusal.fix}")
    now = fingerprint or digest(settings)
    if recorded.fingerprint == now:
        return
    difference = f"fingerprint {recorded.fingerprint}, here {now}"
    if recorded.settings is not None:  # compared as recorded: tuples read back as lists
        difference += f": {describe_difference(recorded.settings, json.loads(json.dumps(settings)))}"
    raise LayercutError(f"run directory {where} holds {refusal.what} {refusal.differs} "
                        f"({difference}); {refusal.fix}")


class FingerprintGuard:
    """One record file of a run directory (default fingerprint.json):
    ``{"fingerprint": ..., "settings": ..., **extra}``."""

    def __init__(self, files: RunFiles, name: str = "fingerprint.json"):
        self.files, self.name = files, name

    def recorded(self) -> Record | None:
        """The record, read once (one request on an object store), or None when there is none."""
        if not self.files.exists(self.name):
            return None
        record = self.files.read_json(self.name)
        fingerprint, settings = record.pop("fingerprint"), record.pop("settings", None)
        return Record(fingerprint, settings, record)

    def check(self, settings: dict[str, Any], *, has_results: bool, refusal: Refusal,
              force: bool = False) -> None:
        """``check`` against this record (see the module function)."""
        check(self.files, self.recorded(), settings, has_results=has_results, refusal=refusal,
              force=force)

    def record(self, settings: dict[str, Any], **extra: Any) -> str:
        """Write the record of ``settings`` (atomically); returns their fingerprint."""
        fingerprint = digest(settings)
        self.files.write_json(self.name, {"fingerprint": fingerprint, "settings": settings, **extra})
        return fingerprint
