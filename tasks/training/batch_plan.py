"""The order of training batches: task-homogeneous global batches, the same for any layout.

Every global batch (W workers x b triplets) is drawn from ONE source dataset, as in the paper's
training; worker r trains on slots r*b .. (r+1)*b of it. The plan depends only on the rows'
content keys (``tasks.training.data.annotate``), their sources, the seed and the sizes: never on file
layout, block order or which Ray Data task read a row, so a resumed or restarted run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from tasks.errors import LayercutError


def plan_global_batches(keys: np.ndarray, sources: list[str | None], *, steps: int,
                        global_batch: int, seed: int) -> np.ndarray:
    """(steps, global_batch) row keys: step s trains on the rows ``plan[s]``.

    Each pass over the data (epoch) shuffles every source's rows, cuts them into full global
    batches (a remainder smaller than a batch waits for the next epoch's shuffle) and shuffles
    the batches of all sources together. Epochs repeat until ``steps`` batches exist.
    """
    groups = _source_groups(keys, sources)
    largest = max(groups, key=lambda s: len(groups[s]), default=None)
    if largest is None or len(groups[largest]) < global_batch:
        size = 0 if largest is None else len(groups[largest])
        where = f" (source {largest!r})" if largest else ""
        raise LayercutError(
            f"a global batch of {global_batch} triplets is larger than the data: every batch "
            f"comes from one source and the largest has {size} usable rows{where}; lower "
            "training.batch_size or the number of workers")
    batches: list[np.ndarray] = []
    epoch = 0
    while len(batches) < steps:
        rng = np.random.default_rng([seed, epoch])
        epoch_batches = []
        for source in groups:
            shuffled = groups[source][rng.permutation(len(groups[source]))]
            full = len(shuffled) // global_batch
            epoch_batches += list(shuffled[:full * global_batch].reshape(full, global_batch))
        batches += [epoch_batches[i] for i in rng.permutation(len(epoch_batches))]
        epoch += 1
    return np.stack(batches[:steps])


def _source_groups(keys: np.ndarray, sources: list[str | None]) -> dict[str, np.ndarray]:
    """{source: its distinct row keys, sorted}: independent of read order."""
    keys = np.asarray(keys, dtype=np.uint64)
    labels = np.asarray(["" if s is None else str(s) for s in sources], dtype=object)
    return {source: np.unique(keys[labels == source]) for source in sorted(set(labels.tolist()))}


def batches_per_epoch(keys: np.ndarray, sources: list[str | None], global_batch: int) -> int:
    """How many full one-source global batches one pass over the data gives: the length of an
    epoch in optimizer steps (what transformers' Trainer plans a schedule of N epochs over)."""
    return sum(len(group) // global_batch for group in _source_groups(keys, sources).values())


def worker_slots(plan: np.ndarray, rank: int, per_worker: int) -> pa.Table:
    """Worker ``rank``'s rows of the plan: (row key, position ``step * b + slot``)."""
    mine = plan[:, rank * per_worker:(rank + 1) * per_worker]
    return pa.table({"_key": pa.array(mine.ravel(), type=pa.uint64()),
                     "_order": pa.array(np.arange(mine.size, dtype=np.int64))})


def place_rows(table: pa.Table, slots: pa.Table) -> pa.Table:
    """The rows of ``table`` that fill ``slots``, one output row per slot they fill."""
    import pyarrow.compute as pc

    valid = table.filter(pc.equal(table["_problem"], "")).drop_columns(["_problem"])
    return valid.join(slots, keys="_key", join_type="inner")


def steps_from_rows(batches: Iterable[dict[str, Any]], per_worker: int, start_step: int = 0
                    ) -> Iterator[tuple[int, dict[str, list]]]:
    """(step, rows of the step) from batches of rows sorted by ``_order``.

    Identical rows in the data share a key, so a slot may arrive twice: the copies are equal and
    only the first is kept. Steps before ``start_step`` (already trained) are skipped.
    """
    current, rows, seen = None, [], set()
    fields = None
    for batch in batches:
        fields = fields or [f for f in batch if not f.startswith("_")]
        for i, order in enumerate(batch["_order"]):
            order = int(order)
            if order in seen:
                continue
            step = order // per_worker
            if current is not None and step != current:
                if current >= start_step:
                    yield _complete(current, rows, per_worker, fields)
                rows = []
            current = step
            seen.add(order)
            if step >= start_step:
                rows.append({f: batch[f][i] for f in fields})
        if len(seen) > 4 * per_worker:  # only the current step's slots can still repeat
            seen = {o for o in seen if o // per_worker == current}
    if current is not None and current >= start_step:
        yield _complete(current, rows, per_worker, fields)


def _complete(step: int, rows: list[dict], per_worker: int, fields: list[str]):
    if len(rows) != per_worker:
        raise LayercutError(f"training step {step} received {len(rows)} rows instead of {per_worker}")
    return step, {f: [row[f] for row in rows] for f in fields}
