"""Train/test overlap: which evaluation texts also occur in the training data.

A text is compared after normalisation (Unicode NFKC, case-folded, whitespace collapsed) through
an 8-byte BLAKE2b digest, so the training side of the paper's E5 mix (millions of texts) is a set
of integers held in memory, and each evaluation task costs one pass over its texts. An exact
match after normalisation is what it finds: a paraphrase is not overlap here.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Iterable, Iterator

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(), "big")


def text_hashes(texts: Iterable[Any]) -> set[int]:
    """Digests of the non-empty strings of ``texts`` (other values are skipped)."""
    return {text_hash(text) for text in texts if isinstance(text, str) and text.strip()}


def dataset_texts(data: Any, depth: int = 0) -> Iterator[str]:
    """Every string in an mteb task's loaded data: ``datasets`` Datasets (their string and
    list-of-string columns) and the dicts and lists mteb nests them in (subsets, splits, a
    retrieval corpus of {id: {"title", "text"}})."""
    if depth > 8:
        return
    if isinstance(data, str):
        yield data
    elif hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        for column in data.column_names:
            feature = data.features[column]
            dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
            if dtype in ("string", "large_string"):
                for value in data[column]:
                    yield from dataset_texts(value, depth + 1)
    elif isinstance(data, dict) or hasattr(data, "items"):
        for value in data.values():
            yield from dataset_texts(value, depth + 1)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from dataset_texts(value, depth + 1)


def task_overlap(task, training: set[int]) -> dict[str, int]:
    """{"texts": distinct texts of the task's loaded evaluation data, "overlapping": how many of
    them occur in the training texts ``training`` (digests from text_hashes)}."""
    if not task.data_loaded:
        task.load_data()
    evaluated = text_hashes(dataset_texts(evaluation_parts(task)))
    return {"texts": len(evaluated), "overlapping": len(evaluated & training)}


def evaluation_parts(task) -> list[Any]:
    """The parts of ``task.dataset`` that are scored: its evaluation splits (a mirror folder may
    hold train and dev splits too), of its chosen subsets where the data is split by subset."""
    data, splits, subsets = task.dataset, list(task.eval_splits), list(task.hf_subsets)
    if any(split in data for split in splits):
        return [data[split] for split in splits if split in data]
    return [data[subset][split] for subset in subsets if subset in data
            for split in splits if split in data[subset]]
