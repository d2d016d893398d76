"""The main job with both routes at toy size: a tiny random Llama with an LM head (6 layers), the
contrastive route (stage 1, all layers only, MTEB on 16 pairs, mteb's logistic-regression probe
on SST-2) and the classification route (SST-2 prompt-tuned at 1 and 6 layers,
scored on 24 test rows, the unpruned model's zero-shot reference). The numbers of a random model
mean nothing; the test checks that every part of the report is there and consistent. (A rerun
reusing finished trials is tested in test_ray_job.py, a finished stage 3 saying "nothing to do"
in test_classification_stage.py.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SHARED_DATA, TINY, family_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory, smollm2_dir) -> str:
    import transformers as tf

    tokenizer = family_tokenizer(smollm2_dir, "llama")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY))
    target = tmp_path_factory.mktemp("tiny-causal-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def _config(path: Path, model_dir: str) -> Path:
    model = {"model": {"name_or_path": model_dir}}
    path.write_text(yaml.safe_dump({
        "name": "both", "grid": ["keep:1.0"], "l3prune": False,
        "models": [{"config": "smollm2-135m", "label": "tiny",
                    "objectives": ["contrastive", "classification"]}],
        "classification": {"datasets": ["sst2"], "layers": [1, 6], "zero_shot": True, "probe": True},
        "overrides": {
            "layer_loss": {**model, "data": {"num_batches": 2, "batch_size": 4}},
            # One worker per trial: the report is under test here; 2-worker runs inside Tune
            # trials are tested in test_ray_job.py, the classification objective on 2 workers in
            # test_classification_stage.py.
            "finetune": {**model, "encoder": {"max_length": 48}, "classification": {"max_length": 48},
                         "training": {"steps": 3, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 3, "learning_rate": 1e-3},
                         "workers": {"num_workers": 1, "cpus_per_worker": 1}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16,
                         "workers": {"cpus_per_worker": 1}},
            "classify": {**model, "max_test_rows": 24, "chunk_size": 8,
                         "workers": {"num_workers": 1, "cpus_per_worker": 1}}},
        "tune": {"max_concurrent_trials": 1, "loggers": ["tensorboard"]},
        "latency": {"texts": 8, "batch_size": 2}}))
    return path


def test_both_routes_side_by_side_in_one_sweep(tmp_path, tiny_causal_lm):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    config = _config(tmp_path / "sweep.yaml", tiny_causal_lm)
    command = [sys.executable, "-m", "pipelines.sweep", "--config", str(config), "--no-progress",
               "--data-root", str(SHARED_DATA), "--output-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "runs" / "both"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not summary["failed"]

    classified = summary["classification"]["trials"]
    assert [row["key"] for row in classified] == ["tiny-sst2-l6", "tiny-sst2-l1"]
    reference = summary["classification"]["zero_shot"]["tiny-sst2"]
    for row in classified:
        assert row["status"] == "done" and row["total_layers"] == 6 and 0 <= row["accuracy"] <= 1
        assert row["change_vs_zero_shot"] == pytest.approx(row["accuracy"] - reference)
        trial = json.loads((run_dir / "trials" / row["key"] / "result.json").read_text())
        assert trial["objective"] == "classification" and trial["test_examples"] == 24
        facts = json.loads((Path(trial["artifact"]) / "layercut.json").read_text())
        assert facts["objective"] == "classification" and facts["layers"] == row["layers"]
        scored = json.loads((run_dir / "trials" / row["key"] / "classify" / "summary.json").read_text())
        assert scored["accuracy"] == row["accuracy"] and not scored["zero_shot"]
    best = summary["classification"]["best_depth"]["tiny/sst2"]
    assert best == max(classified, key=lambda r: (r["accuracy"], -r["layers"]))["layers"]
    zero = json.loads((run_dir / "zero-shot" / "tiny" / "sst2" / "summary.json").read_text())
    assert zero["zero_shot"] and zero["layers"] == 6 and zero["accuracy"] == reference

    # The contrastive trials carry mteb's probe on the same dataset, outside the MTEB mean.
    contrastive = summary["trials"]
    assert contrastive and all(row["status"] == "done" for row in contrastive)
    full = next(row for row in contrastive if row["layers"] == 6)
    probe = full["probe_accuracy"]["LayercutSST2"]
    assert 0 <= probe <= 1 and set(full["mteb_tasks"]) == {"STSBenchmark"}

    report = (run_dir / "report.md").read_text()
    assert "## Classification route" in report and "### The two routes side by side" in report
    tuned_full = next(row for row in classified if row["layers"] == 6)["accuracy"]
    assert f"| tiny | sst2 | 6 | {tuned_full:.4f} | {probe:.4f} |" in report
    with open(run_dir / "classification.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["layers"]) for row in rows] == [6, 1]
    for plot in ("accuracy_vs_layers-tiny.png", "classification_training_loss.png",
                 "layer_loss-tiny.png", "score_vs_parameters.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 10_000, plot

    # What Tune and its loggers see: each trial's real settings as its parameters, the training
    # loss while the trial runs, then its scores; TensorBoard event files (tune.loggers).
    (experiment,) = run_dir.glob("tune-*")
    reported = {}
    for row in [*classified, *contrastive]:
        trial_dir = experiment / row["key"]
        params = json.loads((trial_dir / "params.json").read_text())["trial"]
        objective = "classification" if "-sst2-" in row["key"] else "contrastive"
        assert params == {"key": row["key"], "model": "tiny", "base_model": tiny_causal_lm,
                          "layers": row["layers"], "origins": ", ".join(row["origins"]),
                          "objective": objective, "dataset": "sst2" if objective == "classification" else ""}
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        final = "accuracy" if objective == "classification" else "mteb_mean"
        assert final in results[-1] and results[-1][final] == row.get(final, row.get("accuracy"))
        reported[row["key"]] = [r for r in results[:-1] if "training_loss" in r and r["step"] == 3]
        (events,) = trial_dir.glob("events.out.tfevents.*")
        assert f"ray/tune/{final}".encode() in events.read_bytes()
    # Training ends seconds before the trial's evaluation does, and the trial polls every 5 s.
    assert any(reported.values()), reported
