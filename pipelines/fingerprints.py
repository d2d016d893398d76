"""Fingerprints of what determines a run's numbers, and the words for how two of them differ.

Each stage lists what decides its results (model, data, settings; not where or how fast the
work runs) and keeps the fingerprint beside them: a run directory only resumes results of the
same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(relevant: Any) -> str:
    """16 hex digits of sha256 over ``relevant`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 1] + "…"


def describe_difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'key: before -> now; ...' over the top-level keys whose values differ."""
    keys = [key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    return "; ".join(f"{key}: {_short(before.get(key))} -> {_short(now.get(key))}" for key in keys)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} of nested mappings (lists and other values are leaves), so that
    ``describe_difference`` names the innermost key that differs ('finetune.training.steps')."""
    if not isinstance(tree, dict) or not tree:
        return {prefix or "value": tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
