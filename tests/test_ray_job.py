"""Jobs submitted with `ray job submit` to a real local cluster started as the README says, with
Ray's default token authentication: the README's stage-1 block as written, a refused token, and the
main job (the sweep, both routes) with a stop midway and a resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from _clusters import (head_node, readme_local_cluster_block, readme_shell,
                       stop_after_first_trial_and_resubmit, words)
from conftest import REPO, SHARED_DATA


@pytest.fixture(scope="module")
def local_cluster(ray_cluster, tmp_path_factory):
    """The README's local-cluster block up to `ray start --head`, run as written with Ray's default
    authentication: its exports and commands, then `ray start --head` with `--block` and ports and
    a temp dir of its own (the session's in-process Ray, the ray_cluster fixture, holds the
    default ports). The block's `ray stop` is replaced by stopping this head's process group:
    `ray stop` ends every Ray process on the machine, the session's in-process Ray too."""
    env, ray_cli = readme_shell()

    # A user's clone: the repository (no venv, no git, no runs) beside the shared folder.
    root = tmp_path_factory.mktemp("clone")
    workdir = root / "main"
    shutil.copytree(REPO, workdir, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs*", "__pycache__", ".pytest_cache", "*.egg-info"))
    (root / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)

    temp_dir = tempfile.mkdtemp(prefix="lc-ray-", dir="/tmp")
    try:
        # Four logical CPUs on the machine's two cores: two trials of the main job run side by
        # side (each waits on process start-up and imports far more than it computes).
        with head_node(ray_cli, env, temp_dir, "--num-cpus=4") as cluster:
            yield replace(cluster, workdir=workdir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_readmes_local_cluster_block_submits_stage_1(local_cluster):
    """The README's block after `ray start --head`, pasted into the user's shell: the stage-1 job
    is submitted under Ray's default token authentication and finishes; only the README's own
    `export RAY_AUTH_MODE=token` tells the CLI about the token."""
    commands = readme_local_cluster_block()
    after_start = commands[next(i for i, c in enumerate(commands) if words(c)[:2] == ["ray", "start"]) + 1:]
    assert [words(c)[:3] for c in after_start] == [["ray", "job", "submit"], ["ray", "job", "list"], ["ray", "stop"]]
    deadline = time.time() + 180
    while (listed := local_cluster.shell("ray job list")).returncode != 0 and time.time() < deadline:
        time.sleep(3)  # the freshly started job server is not up yet; a user retries the same way
    result = local_cluster.shell(after_start[0], timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout
    listed = local_cluster.shell(after_start[1])
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout, (listed.stdout + listed.stderr)[-2000:]
    # The job read the uploaded copy, ran on the cluster and wrote to the README's output dir.
    run_dir = local_cluster.workdir / "runs-job" / "layer-loss-smollm2-135m"
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["num_layers"] == 30 and 1 <= selection["small"]["layers"] <= 15 < selection["large"]["layers"]
    assert (run_dir / "layer_loss.png").exists()


@pytest.mark.slow
def test_a_refused_token_is_one_line_naming_what_to_set(local_cluster, tmp_path):
    """layercut connecting to the token-auth cluster without a usable token: exit 2 and one line
    that says what to set, not Ray's traceback."""
    env = {**local_cluster.env, "RAY_ADDRESS": local_cluster.gcs_address,
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing-token")}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "layer-loss", "--no-progress",
                             "--output-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("layercut: error")]
    assert len(errors) == 1 and "RAY_AUTH_MODE=token" in errors[0] and "missing-token" in errors[0], result.stderr


def _sweep_config(path: Path, model_dir: str) -> Path:
    """The whole pipeline at toy size, both routes: a tiny random Llama with an LM head (6 layers).
    The contrastive route: the L3Prune picks and all layers, 3 fine-tuning steps on one Ray Train
    worker (several workers, their failures and resume are test_finetune's), STSBenchmark cut to
    16 pairs, mteb's logistic-regression probe on SST-2. The classification route: SST-2
    prompt-tuned at 1 and 6 layers, scored on 24 test rows, the unpruned model's zero-shot
    reference. Tune's TensorBoard logger is on."""
    model = {"model": {"name_or_path": model_dir}}
    path.write_text(yaml.safe_dump({
        "name": "sweep", "grid": ["keep:1.0"], "l3prune": True,
        "models": [{"config": "smollm2-135m", "label": "tiny",
                    "objectives": ["contrastive", "classification"]}],
        "classification": {"datasets": ["sst2"], "layers": [1, 6], "zero_shot": True, "probe": True},
        "overrides": {
            "layer_loss": {**model, "data": {"num_batches": 2, "batch_size": 4}},
            "finetune": {**model, "encoder": {"max_length": 48}, "classification": {"max_length": 48},
                         "workers": {"num_workers": 1},
                         "training": {"steps": 3, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 1, "learning_rate": 1e-3}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16,
                         "workers": {"cpus_per_worker": 1}},
            "classify": {**model, "max_test_rows": 24, "chunk_size": 8,
                         "workers": {"num_workers": 1, "cpus_per_worker": 1}}},
        # Two trials at a time: the stop after the first one interrupts one other, not three
        # (each interrupted trial starts its Ray Train processes again on resume).
        "tune": {"loggers": ["tensorboard"], "max_concurrent_trials": 2},
        "latency": {"texts": 8, "batch_size": 2},
        "budget": {"max_parameters": 10**9}}))
    return path


@dataclass
class MainJob:
    """The main job submitted twice: stopped after its first trial, then resubmitted."""
    run_dir: Path
    model_dir: str
    finished: dict[str, int]  # trial key -> result.json mtime when the first submission stopped
    logs: dict[str, str]  # trial key -> its training log then
    second: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, tiny_causal_lm, local_cluster) -> MainJob:
    """One run of the main job at toy size, both routes, through `ray job submit`: the first
    submission is stopped with `ray job stop` once a trial has finished, the same command is
    submitted again and completes. The tests below read this one run (a sweep costs minutes)."""
    tmp_path = tmp_path_factory.mktemp("main-job")
    out = tmp_path / "runs"
    config = _sweep_config(tmp_path / "sweep.yaml", tiny_causal_lm)
    entrypoint = ["python", "-m", "pipelines.sweep", "--config", str(config), "--no-progress",
                  "--data-root", str(SHARED_DATA), "--output-dir", str(out)]
    run_dir = out / "sweep"

    job = stop_after_first_trial_and_resubmit(local_cluster, entrypoint, run_dir)
    return MainJob(run_dir, tiny_causal_lm, job.finished, job.logs, job.second)


@pytest.mark.slow
def test_the_main_job_through_ray_job_submit_and_its_resume(main_job):
    from huggingface_hub import ModelCard

    run_dir, finished, logs, second = main_job.run_dir, main_job.finished, main_job.logs, main_job.second
    selection = json.loads((run_dir / "layer-loss" / "tiny" / "selection.json").read_text())
    depths = sorted({6, selection["small"]["layers"], selection["large"]["layers"]}, reverse=True)
    keys = [f"tiny-l{depth}" for depth in depths]
    trials = len(depths) + 2  # and the classification route's two
    assert len(depths) >= 2 and len(finished) < trials, "the sweep must stop midway"

    # Second submission: the same command resumes and completes.
    assert second.returncode == 0 and "succeeded" in second.stdout, (second.stdout + second.stderr)[-4000:]
    assert "resuming the Tune experiment" in second.stdout + second.stderr
    for name, mtime in finished.items():  # finished trials were not run again
        assert (run_dir / "trials" / name / "result.json").stat().st_mtime_ns == mtime
        assert (run_dir / "trials" / name / "finetune" / "training_log.csv").read_text() == logs[name]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["key"] for row in summary["trials"]] == keys and not summary["failed"]
    for row in summary["trials"]:
        assert row["status"] == "done" and row["total_layers"] == 6 and -1 <= row["mteb_mean"] <= 1
        assert row["latency_ms"] > 0 and row["peak_memory_mib"] > 0
        assert (run_dir / "trials" / row["key"] / "finetune" / "model" / "layercut.json").exists()
        result = json.loads((run_dir / "trials" / row["key"] / "result.json").read_text())
        assert result["mteb_tasks"].keys() == {"STSBenchmark"} and result["steps"] == 3
        # The artifact's card carries the scores the trial measured, and no local path.
        card = (run_dir / "trials" / row["key"] / "finetune" / "model" / "README.md").read_text()
        assert {r.dataset_name: r.metric_value for r in ModelCard(card).data.eval_results} == {
            f"MTEB {task}": round(score, 6) for task, score in result["mteb_tasks"].items()}
        assert str(run_dir.parent.parent) not in card and str(SHARED_DATA) not in card
        # Each depth beside itself untrained (pipelines/routes/contrastive/untrained.py): the base model cut to the
        # same depth, scored with the trained evaluation's tasks, input format, pooling, dtype and
        # subsample (the two stage-3 fingerprints differ in the model and its cut only).
        assert result["untrained_tasks"].keys() == {"STSBenchmark"} and -1 <= row["untrained_mean"] <= 1
        assert row["untrained_mean"] == result["untrained_mean"]
        assert row["change_vs_untrained"] == row["mteb_mean"] - row["untrained_mean"] == result["change_vs_untrained"]
        settings = {stage: json.loads((run_dir / "trials" / row["key"] / stage / "fingerprint.json").read_text())["settings"]
                    for stage in ("evaluate", "untrained")}
        assert settings["untrained"]["layers"] == row["layers"] and settings["evaluate"]["layers"] is None
        assert settings["untrained"]["model"] != settings["evaluate"]["model"]
        assert ({k: v for k, v in settings["untrained"].items() if k not in ("model", "layers")}
                == {k: v for k, v in settings["evaluate"].items() if k not in ("model", "layers")})
    effect = summary["fine_tuning_effect"]["tiny"]
    assert sorted(effect["outside_interval"] + effect["inside_interval"] + effect["no_interval"], reverse=True) == depths
    full = next(row for row in summary["trials"] if row["layers"] == 6)
    assert full["change_vs_full"] == 0
    assert summary["best_within_budget"]["tiny"] in depths and summary["pareto_front"]["tiny"]
    assert summary["stage1"]["tiny"]["small"] == selection["small"]["layers"]
    report = (run_dir / "report.md").read_text()
    for key, depth in zip(keys, depths):
        assert f"| tiny | {depth}/6 |" in report
    with open(run_dir / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["layers"]) for row in rows] == depths and {row["status"] for row in rows} == {"done"}
    assert all(float(row["change_vs_untrained"]) == float(row["mteb_mean"]) - float(row["untrained_mean"])
               for row in rows)
    assert "## Fine-tuning's effect: each depth against itself untrained" in report and "\n- **tiny**: " in report
    for plot in ("layer_loss-tiny.png", "score_vs_parameters.png", "training_loss.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 10_000


@pytest.mark.slow
def test_both_routes_side_by_side_in_one_sweep(main_job):
    """The classification route beside the contrastive one in the same run. The numbers of a
    random model mean nothing; this checks that every part of the report is there and consistent.
    (A finished stage 3 saying "nothing to do" is tested in test_classification_stage.py.)"""
    run_dir = main_job.run_dir
    assert main_job.second.returncode == 0, (main_job.second.stdout + main_job.second.stderr)[-4000:]
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
    # loss while the trial runs, then its scores; TensorBoard event files (tune.loggers). A trial
    # the stop interrupted runs again on resume: its logs hold both attempts, the last one last,
    # or, if the stop came before Tune recorded the trial, the rerun has a directory of its own
    # (Tune adds a suffix to the name): the newest result is the trial's.
    (experiment,) = run_dir.glob("tune-*")
    reported = {}
    for row in [*classified, *contrastive]:
        logged = [path.parent for path in experiment.glob(f"{row['key']}*/result.json")
                  if path.parent.name == row["key"] or path.parent.name.startswith(f"{row['key']}_")]
        assert logged, row["key"]
        trial_dir = max(logged, key=lambda path: (path / "result.json").stat().st_mtime_ns)
        params = json.loads((trial_dir / "params.json").read_text())["trial"]
        objective = "classification" if "-sst2-" in row["key"] else "contrastive"
        assert params == {"key": row["key"], "model": "tiny", "base_model": main_job.model_dir,
                          "layers": row["layers"], "origins": ", ".join(row["origins"]),
                          "objective": objective, "dataset": "sst2" if objective == "classification" else ""}
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        final = "accuracy" if objective == "classification" else "mteb_mean"
        assert final in results[-1] and results[-1][final] == row.get(final, row.get("accuracy"))
        reported[row["key"]] = [r for r in results[:-1] if "training_loss" in r and r["step"] == 3]
        events = sorted(trial_dir.glob("events.out.tfevents.*"))
        assert events and any(f"ray/tune/{final}".encode() in e.read_bytes() for e in events), row["key"]
    # Training ends seconds before the trial's evaluation does, and the trial polls every 5 s.
    assert any(reported.values()), reported


def test_working_dir_upload_stays_small():
    """What `ray job submit --working-dir .` uploads (files git does not ignore) is far under
    Ray's 100 MiB limit: models, data and results never live in the repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]
    total_mib = sum(path.stat().st_size for path in files) / 2**20
    assert files and total_mib < 5, f"working dir upload would be {total_mib:.1f} MiB"
