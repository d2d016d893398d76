"""Stage 2 end to end: the real CLI, Ray Train with 2 CPU workers, DeepSpeed (gloo), SmolLM2 cut
to 3 layers, the shared training triplets. A run that loses one worker and then the whole job
finishes with the same per-step losses as an uninterrupted run of the same seed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow

RUN = ["--layers", "3", "--data-root", str(SHARED_DATA), "--no-progress",
       "training.steps=12", "training.batch_size=4", "training.warmup_steps=2",
       "training.learning_rate=1e-3", "training.checkpoint_every=4", "training.max_failures=2",
       "encoder.max_length=64", "workers.num_workers=2", "workers.address=local"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def _command(output_dir: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.finetune", "--output-dir", str(output_dir),
            "--name", name, *RUN, *extra]


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "training_log.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def _wait_for_checkpoint(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 600) -> None:
    marker = run_dir / "ray" / "train" / f"step-{step:07d}" / "trainer_state.json"
    deadline = time.time() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended (exit {process.returncode}) before checkpoint {step}: "
                                 f"{process.stderr.read()[-3000:] if process.stderr else ''}")
        if time.time() > deadline:
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_cluster, killed_job) -> Path:
    """The reference run: the same CLI (``main``), in this process on the session's Ray, while
    the killed run below trains beside it in a process and Ray of its own (``killed_job``). The
    two overlap because a Ray Train run on two cores waits on process start-up far more than it
    computes; in this process it also needs no Python and Ray start of its own."""
    from pipelines.cli import main

    output = tmp_path_factory.mktemp("finetune")
    assert main(["finetune", "--output-dir", str(output), "--name", "straight", *RUN]) == 0
    return output / "straight"


def _loss_of(model_dir: str, layers: int | None, rows: list[dict]) -> float:
    from tasks.model.encoder import build_encoder
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.model.prompts import PromptConfig
    from tasks.training.loss import hard_negative_infonce

    encoder = build_encoder(ModelSpec(ModelSource(model_dir, True), layers=layers, dtype="float32",
                                      device="cpu"), PromptConfig(max_length=64))
    losses = []
    for begin in range(0, len(rows), 16):
        batch = rows[begin:begin + 16]
        q = encoder.encode([r["query"] for r in batch], [r["instruction"] for r in batch])
        p = encoder.encode([r["positive"] for r in batch])
        n = encoder.encode([r["negative"] for r in batch])
        losses.append(float(hard_negative_infonce(q, p, n)))
    return sum(losses) / len(losses)


def test_finetune_trains_and_exports_a_standard_model(uninterrupted, smollm2_dir, triplet_rows):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    run_dir = uninterrupted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["layers"], summary["total_layers"], summary["steps"], summary["workers"]) == (3, 30, 12, 2)
    assert summary["global_batch"] == 8
    losses = _losses(run_dir)
    assert len(losses) == 12 and all(l == l for l in losses)
    assert (run_dir / "loss_curve.png").stat().st_size > 10_000
    for checkpoint in ("step-0000008", "step-0000012"):  # keep_checkpoints: 2
        files = {p.name for p in (run_dir / "ray" / "train" / checkpoint).iterdir()}
        assert {"adapter", "deepspeed", "trainer_state.json", "rng-rank0.pt", "rng-rank1.pt"} <= files

    model_dir = run_dir / "model"
    info = json.loads((model_dir / "layercut.json").read_text())
    assert info["layers"] == 3 and info["pooling"] == "weighted_mean"
    card = (model_dir / "README.md").read_text()
    assert "3 of 30" in card and "removed" in card and "final training loss" in card
    backbone = AutoModel.from_pretrained(model_dir)
    assert backbone.config.num_hidden_layers == 3 and len(backbone.layers) == 3

    # Loss goes down: the same 64 triplets (4 batches, 2 per source) before and after training.
    sick = [r for r in triplet_rows if r["source"] == "SICK_train"][:32]
    trec = [r for r in triplet_rows if r["source"] != "SICK_train"][:32]
    before = _loss_of(smollm2_dir, 3, sick + trec)
    after = _loss_of(str(model_dir), None, sick + trec)
    assert after < before - 0.03, (before, after)  # deterministic: 2.477 -> 2.408

    # sentence-transformers loads it offline and gives layercut's embeddings.
    from tasks.model.encoder import build_encoder
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.model.prompts import PromptConfig

    texts = [r["positive"].strip() for r in trec[:6]] + ["A man is playing a guitar."]
    ours = build_encoder(ModelSpec(ModelSource(str(model_dir), True), dtype="float32", device="cpu"),
                         PromptConfig(**info["prompt"])).encode(texts)
    st = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    theirs = torch.tensor(st.encode(texts, batch_size=3))
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()


def _descendants_named(pid: int, name: str):
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True)
            if name in " ".join(p.cmdline() or [])]


@dataclass
class Interrupted:
    run_dir: Path
    killed_worker: int  # pid of the training worker killed at checkpoint 4
    workers_after: list[int]  # the training workers' pids at checkpoint 8
    resumed: int  # exit status of the same command, run again after the job died


def _kill_a_worker_then_the_job(output: Path) -> tuple[int, list[int]]:
    """Run the command in its own process (and so its own Ray); SIGKILL a training worker at
    checkpoint 4, then at checkpoint 8 the whole job: the driver and the Ray it started.
    Returns (the killed worker's pid, the training workers' pids at checkpoint 8)."""
    run_dir = output / "killed"
    process = subprocess.Popen(_command(output, "killed"), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_checkpoint(run_dir, 4, process)
        workers = _descendants_named(process.pid, "RayTrainWorker")
        assert workers, "no Ray Train worker process found"
        killed = workers[-1].pid
        os.kill(killed, signal.SIGKILL)
        _wait_for_checkpoint(run_dir, 8, process)
        after = [worker.pid for worker in _descendants_named(process.pid, "RayTrainWorker")]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return killed, after


@pytest.fixture(scope="module")
def killed_job(tmp_path_factory):
    """(output dir, future of ``_kill_a_worker_then_the_job``): started in a thread before the
    reference run, so the two trainings overlap (about a minute saved on 2 cores). The killing
    looks only at this job's own process tree."""
    from concurrent.futures import ThreadPoolExecutor

    output = tmp_path_factory.mktemp("interrupted")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield output, pool.submit(_kill_a_worker_then_the_job, output)


@pytest.fixture(scope="module")
def interrupted(killed_job, uninterrupted, ray_cluster) -> Interrupted:
    """One run that loses a training worker at checkpoint 4 (Ray Train restarts the worker group
    from its checkpoint) and then, at checkpoint 8, the whole job (``killed_job``). The same
    command is then run again, through the CLI's ``main`` on the session's Ray once the reference
    run is done: the job and its Ray are gone, only the run directory is left, as for a user who
    reruns it (a new process would add a Python and a Ray start, about 20 s on 2 cores).
    (One run serves both failures: each costs a full training run.)"""
    from pipelines.cli import main

    output, job = killed_job
    killed, after = job.result()
    resumed = main(["finetune", "--output-dir", str(output), "--name", "killed", *RUN])
    return Interrupted(output / "killed", killed, after, resumed)


def test_killed_worker_is_restarted_and_the_run_matches(uninterrupted, interrupted):
    # The group was restarted without the killed worker and trained on to checkpoint 8.
    assert interrupted.workers_after and interrupted.killed_worker not in interrupted.workers_after
    assert interrupted.resumed == 0
    assert _losses(interrupted.run_dir) == pytest.approx(_losses(uninterrupted), abs=1e-4)


def test_rerun_after_the_job_died_resumes_and_matches(uninterrupted, interrupted, ray_cluster, capsys):
    from pipelines.cli import main

    assert interrupted.resumed == 0
    assert _losses(interrupted.run_dir) == pytest.approx(_losses(uninterrupted), abs=1e-4)

    # The finished run, asked again in-process on the session's Ray: nothing to do; asked with
    # another configuration: a one-line refusal.
    args = ["finetune", "--output-dir", str(interrupted.run_dir.parent), "--name", interrupted.run_dir.name, *RUN]
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert main([*args, "training.learning_rate=5e-4"]) == 2
    assert "different configuration" in capsys.readouterr().err.strip().splitlines()[-1]
