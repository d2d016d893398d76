"""Train/test overlap: evaluation texts found in the training data, checked against the shared
data's own marks (each local triplet says whether it holds a sentence of SICK's test partition)."""

from __future__ import annotations

import json

from conftest import SHARED_DATA, TRIPLETS
from tasks.evaluation.mteb_tasks import load_task
from tasks.evaluation.overlap import (dataset_texts, evaluation_parts, normalize, task_overlap, text_hash,
                                      text_hashes)


def _triplets() -> list[dict]:
    return [json.loads(line) for line in TRIPLETS.read_text().splitlines()]


def test_normalisation_ignores_case_width_and_spacing_only():
    assert normalize("  A  dog\tis\nRUNNING ") == "a dog is running"
    assert normalize("ｆｕｌｌ width") == "full width"  # NFKC
    assert text_hash("A dog runs.") == text_hash("a  dog runs.") != text_hash("A dog runs")


def test_overlap_with_sick_r_is_the_marked_triplets():
    rows = _triplets()
    training = text_hashes(text for row in rows for text in (row["query"], row["positive"], row["negative"]))
    sick = load_task("SICK-R", str(SHARED_DATA))
    counts = task_overlap(sick, training)
    evaluated = {text_hash(text) for text in dataset_texts(evaluation_parts(sick))}
    assert counts["texts"] == len(evaluated) and counts["overlapping"] > 0
    # Independently, row by row: the triplets that share a text with the mirror's SICK-R test
    # pairs are all marked by the data as holding a SICK test sentence (the marks refer to the
    # whole test partition, of which the mirror holds 2000 pairs, so some marked rows do not).
    hits = [row for row in rows if any(text_hash(row[f]) in evaluated for f in ("query", "positive", "negative"))]
    assert len(hits) == 202 and all(row["sentence_in_sick_test"] for row in hits)
    assert counts["overlapping"] == len(evaluated & training)
    # The local default's tasks are held out; only the evaluated split counts (the STSBenchmark
    # mirror also holds train and dev splits).
    for name in ("STSBenchmark", "STS12"):
        task = load_task(name, str(SHARED_DATA))
        assert task_overlap(task, training)["overlapping"] == 0, name
        assert sum(len(part) for part in evaluation_parts(task)) == len(task.dataset["test"])


def test_the_sweep_marks_overlapping_tasks(tmp_path, ray_cluster):
    from pipelines.config import find_config, load_config
    from pipelines.routes.contrastive.plan import training_overlap
    from pipelines.routes.contrastive.report import _overlap_markdown
    from pipelines.sweep import SweepConfig, resolve_models

    config = load_config(SweepConfig, find_config("smollm2-135m", "run"),
                         [f"output_dir={tmp_path}", f"data_root={SHARED_DATA}",
                          "overrides.evaluate.tasks=[STSBenchmark, SICK-R]"])
    (plan,) = resolve_models(config)
    plan.overlap = training_overlap(plan)
    assert plan.overlap["STSBenchmark"]["overlapping"] == 0 and plan.overlap["SICK-R"]["overlapping"] > 0
    lines = _overlap_markdown([plan])
    assert lines[1] == "## Train/test overlap"
    assert lines[-1] == (f"- **smollm2-135m** / SICK-R: {plan.overlap['SICK-R']['overlapping']} of "
                         f"{plan.overlap['SICK-R']['texts']} evaluated texts")
    assert not any("STSBenchmark" in line for line in lines)
