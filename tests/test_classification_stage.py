"""The classification objective end to end: the real CLI, Ray Train with 2 CPU workers and
DeepSpeed (gloo), SmolLM2 cut to 4 layers, prompt-tuned on the shared SST-2 mirror; then stage 3
(``evaluate-classifier``) on Ray actors.

What is asserted and why it is safe: on 300 seeded test rows, a classifier at chance scores at
most the majority rate (0.527 on these rows) with a standard deviation of ~0.03. The test asks
for majority + 0.08 accuracy (2.7 standard deviations above chance) and macro-F1 above 0.55. When
it was written, the tuned 4-layer model scored 0.660 on these rows and the same cut model zero-shot
0.607 (other seeds and step counts, tried in-process on 200 rows: 0.67-0.68 after 60-100 steps at
lr 1e-3; 0.55 at lr 2e-3). The run is deterministic for a seed on a CPU (a killed and resumed run
of it matched the uninterrupted one's 60 per-step losses to 1e-4), so the margins (0.053 over the
threshold and over zero-shot) do not vary between CI runs on the same machine type. The loss must
fall (mean of the last 10 steps below that of the first 10).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow

TRAIN = ["--layers", "4", "--data-root", str(SHARED_DATA), "--no-progress",
         "objective=classification", "classification.dataset=sst2", "classification.max_length=64",
         "training.steps=60", "training.batch_size=8", "training.warmup_steps=5",
         "training.learning_rate=1e-3", "training.checkpoint_every=20",
         "workers.num_workers=2", "workers.address=local"]


def _classify(capsys, output: Path, model: str, *extra: str) -> tuple[int, str]:
    """``layercut evaluate-classifier`` in this process, on the session's Ray: (exit status,
    stderr). These only read and score."""
    from pipelines.cli import main

    capsys.readouterr()
    status = main(["evaluate-classifier", "--model", model, "--output-dir", str(output),
                   "--data-root", str(SHARED_DATA), "--no-progress", "max_test_rows=300", "chunk_size=100",
                   "workers.num_workers=2", "workers.address=local", *extra])
    return status, capsys.readouterr().err


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "training_log.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_cluster) -> Path:
    """The training run: the CLI's ``main``, in this process on the session's Ray (a separate
    process would only add a Python start with torch and a Ray start of its own, about 20 s on 2
    cores; the CLI in its own process is test_finetune.py's killed and resumed runs)."""
    from pipelines.cli import main

    output = tmp_path_factory.mktemp("classification")
    assert main(["finetune", "--output-dir", str(output), "--name", "straight", *TRAIN]) == 0
    return output / "straight"


def test_prompt_tuned_cut_model_beats_the_majority_class(trained, tmp_path, ray_cluster, capsys):
    from transformers import AutoModelForCausalLM

    losses = _losses(trained)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, losses
    artifact = trained / "model"
    facts = json.loads((artifact / "layercut.json").read_text())
    assert facts["objective"] == "classification" and facts["layers"] == 4
    assert facts["classification"]["label_names"] == ["negative", "positive"]
    model = AutoModelForCausalLM.from_pretrained(artifact)  # plain transformers loads it
    assert model.config.num_hidden_layers == 4

    status, stderr = _classify(capsys, tmp_path, str(artifact), "--name", "tuned")
    assert status == 0, stderr[-4000:]
    summary = json.loads((tmp_path / "tuned" / "summary.json").read_text())
    assert summary["examples"] == 300 and not summary["zero_shot"] and summary["layers"] == 4
    assert summary["accuracy"] >= summary["majority_rate"] + 0.08, summary
    assert summary["macro_f1"] > 0.55, summary
    with open(tmp_path / "tuned" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300
    assert sum(r["gold"] == r["predicted"] for r in rows) / 300 == pytest.approx(summary["accuracy"])

    # Resume: a finished run does nothing; a lost chunk is scored again, and only it.
    status, stderr = _classify(capsys, tmp_path, str(artifact), "--name", "tuned")
    assert status == 0 and "nothing to do" in stderr
    chunks = sorted((tmp_path / "tuned" / "chunks").glob("*/*.npz"))
    assert len(chunks) == 3
    kept = {c.name: c.stat().st_mtime_ns for c in chunks[1:]}
    chunks[0].unlink()
    (tmp_path / "tuned" / "summary.json").unlink()
    status, stderr = _classify(capsys, tmp_path, str(artifact), "--name", "tuned")
    assert status == 0, stderr[-4000:]
    assert {c.name: c.stat().st_mtime_ns for c in chunks[1:]} == kept
    assert json.loads((tmp_path / "tuned" / "summary.json").read_text())["accuracy"] == summary["accuracy"]

    # The base model cut alike, zero-shot with the same prompt: the reference the tuning beat.
    status, stderr = _classify(capsys, tmp_path, "smollm2-135m", "--layers", "4", "--name", "zero")
    assert status == 0, stderr[-4000:]
    zero_shot = json.loads((tmp_path / "zero" / "summary.json").read_text())
    assert zero_shot["zero_shot"] and zero_shot["layers"] == 4
    assert summary["accuracy"] > zero_shot["accuracy"], (summary, zero_shot)


def test_rerun_of_the_finished_classification_run_does_nothing(trained, ray_cluster, capsys):
    """The run's fingerprint (label names read from the data included) is stable across runs
    (asked again in this process, on the session's Ray).

    Kill-and-resume is the same training loop, checkpoint and batch plan for both objectives and
    is tested end to end in test_finetune.py; the classification model's DeepSpeed checkpoint and
    exact resume in test_classification_units.py."""
    from pipelines.cli import main

    capsys.readouterr()
    assert main(["finetune", "--output-dir", str(trained.parent), "--name", trained.name, *TRAIN]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert len(_losses(trained)) == 60
