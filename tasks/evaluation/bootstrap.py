"""Bootstrap 95% intervals for scores of subsampled evaluations (``max_samples_per_split``).

A score on 100 STS pairs moves by about +/-0.1 between samples; the interval says how much. The
evaluated items (pairs, test texts) are resampled with replacement and the main score recomputed
on each resample:

- STS (``cosine_spearman``): Spearman correlation between the gold scores and the model's cosine
  similarities of the resampled pairs (average ranks for ties, as scipy's ``spearmanr``);
- classification (``accuracy``): mteb trains ``n_experiments`` classifiers and averages their
  accuracies; each test text's value is the fraction of them that label it right, and the
  resampled score is the mean of the values (exactly the averaged accuracy on the resample).

A task scored on several splits or subsets ("parts") averages them, as mteb's ``get_score``; each
part is resampled on its own. Randomness: task ``name`` draws from
``numpy.random.default_rng([seed, zlib.crc32(name)])``, its parts in sorted order, each part one
``integers(0, n, size=(resamples, n))`` matrix of row indices. The interval is the 2.5th and
97.5th percentile of the resampled scores (resamples where a correlation is undefined, all ranks
tied, are left out). The mean over tasks takes, per resample, the mean of the tasks' resampled
scores, so its interval is narrower than any one task's.

A change between two models scored on the same items (a depth trained against itself untrained)
gets a *paired* interval: both are resampled with the same rows (the draw depends only on the
task, the seed and the item counts) and the interval is the percentiles of the resampled
differences. Item-to-item variation that both models share (an easy pair is easy for both)
cancels, so the paired interval of a change is much narrower than either score's own interval;
it is the interval to test the change against (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, sec. 16.3: bootstrapping a difference of paired statistics).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

RESAMPLES = 1000
SEED = 42
LEVEL = 0.95
# main score -> how a part's items give it
STATISTICS = {"cosine_spearman": "spearman", "accuracy": "mean"}


def spearman_rows(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``gold`` with the same row of ``predicted`` (R, n);
    NaN where a row's ranks are all tied."""
    from scipy.stats import rankdata

    a = rankdata(gold, axis=1)
    b = rankdata(predicted, axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def part_score(statistic: str, part: dict[str, list[float]], rows: np.ndarray | None = None) -> np.ndarray:
    """The part's score on the resamples ``rows`` (R, n) of item indices; all items once when
    None (then a (1,) array: the score itself)."""
    n = len(part["gold"] if statistic == "spearman" else part["values"])
    rows = np.arange(n)[None, :] if rows is None else rows
    if statistic == "spearman":
        return spearman_rows(np.asarray(part["gold"], float)[rows], np.asarray(part["predicted"], float)[rows])
    return np.asarray(part["values"], float)[rows].mean(axis=1)


def task_resamples(name: str, items: dict[str, Any], *, seed: int = SEED,
                   resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples,) scores of task ``name`` on resampled items (the mean over its parts)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    statistic = items["statistic"]
    scores = []
    for key in sorted(items["parts"]):
        part = items["parts"][key]
        n = len(part["gold"] if statistic == "spearman" else part["values"])
        scores.append(part_score(statistic, part, rng.integers(0, n, size=(resamples, n))))
    return np.mean(scores, axis=0)


def full_score(items: dict[str, Any]) -> float:
    """The task's score on all its items: equals mteb's main score when the items are right."""
    return float(np.mean([part_score(items["statistic"], part)[0] for part in items["parts"].values()]))


def percentile_interval(scores: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """[low, high]: the central ``level`` of the finite resampled scores (None if none is)."""
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def intervals(items_by_task: dict[str, dict[str, Any] | None], *, seed: int = SEED,
              resamples: int = RESAMPLES) -> tuple[dict[str, list[float] | None], list[float] | None]:
    """({task: [low, high] or None}, [low, high] of the mean over the tasks, or None unless every
    task has items)."""
    per_task, draws = {}, []
    for name, items in items_by_task.items():
        if not items:
            per_task[name] = None
            continue
        scores = task_resamples(name, items, seed=seed, resamples=resamples)
        per_task[name] = percentile_interval(scores)
        draws.append(scores)
    complete = items_by_task and len(draws) == len(items_by_task)
    return per_task, percentile_interval(np.mean(draws, axis=0)) if complete else None


def evaluated_items(task, predictions: dict[str, Any]) -> dict[str, Any] | None:
    """What a task's score is computed from, per part, from mteb's saved predictions
    (``<task>_predictions.json``) and the task's (subsampled) data; None when the main score is
    not one of ``STATISTICS`` or the predictions do not line up with the data."""
    statistic = STATISTICS.get(task.metadata.main_score)
    if statistic is None:
        return None
    dataset = task.dataset
    flat = any(split in dataset for split in task.eval_splits)
    parts = {}
    for subset, splits in predictions.items():
        if subset == "mteb_model_meta":
            continue
        for split, predicted in splits.items():
            rows = dataset[split] if flat else dataset[subset][split]
            if statistic == "spearman":
                gold = [float(s) for s in rows["score"]]
                scores = predicted["cosine_scores"]
                if len(scores) != len(gold):
                    return None
                parts[f"{subset}/{split}"] = {"gold": gold, "predicted": [float(s) for s in scores]}
            else:
                labels = list(rows[task.label_column_name])
                if not predicted or any(len(run) != len(labels) for run in predicted):
                    return None
                right = np.mean([[p == y for p, y in zip(run, labels)] for run in predicted], axis=0)
                parts[f"{subset}/{split}"] = {"values": right.tolist()}
    if not parts:
        return None
    return {"main_score": task.metadata.main_score, "statistic": statistic, "parts": parts}


def same_items(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two models' items of one task are the same evaluated items: the same statistic and
    parts, each part as long, and (STS) the same gold scores in the same order."""
    if a["statistic"] != b["statistic"] or sorted(a["parts"]) != sorted(b["parts"]):
        return False
    for key, part in a["parts"].items():
        other = b["parts"][key]
        if a["statistic"] == "spearman":
            if part["gold"] != other["gold"]:
                return False
        elif len(part["values"]) != len(other["values"]):
            return False
    return True


def paired_change_intervals(after: dict[str, dict[str, Any] | None], before: dict[str, dict[str, Any] | None],
                            *, seed: int = SEED, resamples: int = RESAMPLES
                            ) -> tuple[dict[str, list[float] | None], list[float] | None]:
    """Paired bootstrap 95% intervals of the change ``after`` - ``before`` of two models scored on
    the same items: ({task: [low, high] or None}, [low, high] of the change of the mean over
    the tasks, or None unless every task has a paired interval).

    Both models' task scores are recomputed on the same resampled rows (``task_resamples`` draws
    them from the task name, the seed and the item counts), and the interval is the central 95%
    of the resampled differences. A task gets None when either side has no items or their items
    differ (``same_items``: another subsample, other gold scores), as nothing pairs them then.
    """
    per_task, draws = {}, []
    names = list(after)
    for name in names:
        a, b = after.get(name), before.get(name)
        if not a or not b or not same_items(a, b):
            per_task[name] = None
            continue
        change = (task_resamples(name, a, seed=seed, resamples=resamples)
                  - task_resamples(name, b, seed=seed, resamples=resamples))
        per_task[name] = percentile_interval(change)
        draws.append(change)
    complete = names and len(draws) == len(names) and set(before) == set(after)
    return per_task, percentile_interval(np.mean(draws, axis=0)) if complete else None
