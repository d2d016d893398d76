"""The main job (`layercut run`: the sweep, both routes) submitted with `ray job submit` to an
autoscaling cluster, for real: Ray's own autoscaler in simulated multi-node mode (the fake
multi-node provider of Ray's autoscaler tests) on this machine, with Ray's default token
authentication. The head takes no work (0 CPUs); one worker node type (2 CPUs, min 0, max 2) is
added while the sweep's tasks and trials pend, and released once idle. Each simulated node has
its own Ray temp dir (the job's working directory is unpacked there), and every Python process on
a worker node records any file it opens inside another node's directory (tests/_fake_nodes.py,
tests/node_audit/): a path that only the head has on a real cluster. The sweep
(`tune.autoscaling: true`) is stopped after its first finished trial and submitted again. The
tests below read this one run (a sweep costs minutes): the report and the resume, both routes
side by side, and what the autoscaler and the nodes did."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from _clusters import LocalCluster, StoppedAndResubmitted, head_node, readme_shell, stop_after_first_trial_and_resubmit
from _fake_nodes import processes_under
from conftest import SHARED_DATA, free_port

TESTS = Path(__file__).resolve().parent
WORKER_TYPE = "cpu-worker"
MAX_WORKERS = 2


def _autoscaling_config(path: Path, cluster_dir: Path, gcs_address: str) -> Path:
    """Ray's fake multi-node example config (which the pip wheel lacks) written out: a head of no
    CPUs and a worker type the autoscaler adds and removes (idle for 18 s), each worker node in
    ``cluster_dir/w<N>/`` with the open-file audit on its PYTHONPATH."""
    node_env = {"PYTHONPATH": str(TESTS / "node_audit"), "LAYERCUT_TEST_CLUSTER_DIR": str(cluster_dir),
                "LAYERCUT_TEST_NODE_DIR": "{node_dir}"}
    config = {
        "cluster_name": "layercut-autoscaling", "max_workers": MAX_WORKERS,
        "provider": {"type": "external", "module": "_fake_nodes.NodeDirsProvider", "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 2, "object_store_memory": 200 * 2**20},
                          "node_config": {"nodes_dir": str(cluster_dir), "env": node_env},
                          "min_workers": 0, "max_workers": MAX_WORKERS}},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.3, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """A head with Ray's autoscaler (RAY_FAKE_CLUSTER=1) in the README's shell (token auth), all
    in a short directory of its own: ``head/`` the head's temp dir, ``w<N>/`` each worker node's.
    Stopped by its process group, which holds the autoscaler and so every node it launched; a
    process still naming the directory after that is killed by its pid."""
    env, ray_cli = readme_shell()
    cluster_dir = Path(tempfile.mkdtemp(prefix="lcas-", dir="/tmp"))  # short: socket paths
    (cluster_dir / "head").mkdir()
    gcs_port = free_port()
    config = _autoscaling_config(cluster_dir / "autoscaling.yaml", cluster_dir, f"127.0.0.1:{gcs_port}")
    env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "AUTOSCALER_METRIC_PORT": str(free_port()),
           "PYTHONPATH": str(TESTS)}  # the autoscaler's monitor imports _fake_nodes
    try:
        with head_node(ray_cli, env, str(cluster_dir / "head"), "--num-cpus=0", "--node-ip-address=127.0.0.1",
                       "--object-store-memory=200000000", f"--autoscaling-config={config}",
                       gcs_port=gcs_port) as cluster:
            yield cluster, cluster_dir
    finally:
        deadline = time.time() + 5
        while (left := processes_under(cluster_dir)) and time.time() < deadline:
            time.sleep(1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(cluster_dir, ignore_errors=True)


def _nodes(cluster: LocalCluster) -> list[dict]:
    """Every node the cluster has had, dead ones too (`ray list nodes`, Ray's state API)."""
    listed = subprocess.run([cluster.ray_cli, "list", "nodes", "--format=json", "--detail", "--limit=100",
                             "--address", cluster.api_address], env=cluster.env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json.loads(listed.stdout)


def _time(text: str) -> float:
    """A time as `ray list nodes --format=json` writes it ("2026-11-30 13:19:13.658000")."""
    return datetime.fromisoformat(text).timestamp()


def _sweep_config(path: Path, model_dir: str) -> Path:
    """The whole pipeline at toy size, both routes: a tiny random Llama with an LM head (6 layers).
    The contrastive route: the L3Prune picks and all layers, 3 fine-tuning steps on one Ray Train
    worker (several workers, their failures and resume are test_finetune's), STSBenchmark cut to
    16 pairs, mteb's logistic-regression probe on SST-2. The classification route: SST-2
    prompt-tuned at 1 and 6 layers, scored on 24 test rows, the unpruned model's zero-shot
    reference. Tune's TensorBoard logger is on. Every stage names its workers and device (on an
    autoscaling cluster the current resources say nothing of what will be added)."""
    model = {"model": {"name_or_path": model_dir}}
    cpu = {"use_gpu": False, "num_workers": 1, "cpus_per_worker": 1}
    path.write_text(yaml.safe_dump({
        "name": "sweep", "grid": ["keep:1.0"], "l3prune": True,
        "models": [{"config": "smollm2-135m", "label": "tiny",
                    "objectives": ["contrastive", "classification"]}],
        "classification": {"datasets": ["sst2"], "layers": [1, 6], "zero_shot": True, "probe": True},
        "overrides": {
            "layer_loss": {**model, "data": {"num_batches": 2, "batch_size": 4}, "workers": cpu},
            "finetune": {**model, "encoder": {"max_length": 48}, "classification": {"max_length": 48},
                         "workers": cpu,
                         "training": {"steps": 3, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 1, "learning_rate": 1e-3}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16, "workers": cpu},
            "classify": {**model, "max_test_rows": 24, "chunk_size": 8, "workers": cpu}},
        # Two trials at a time: the stop after the first one interrupts one other, not three
        # (each interrupted trial starts its Ray Train processes again on resume).
        "tune": {"autoscaling": True, "loggers": ["tensorboard"], "max_concurrent_trials": 2},
        "latency": {"texts": 8, "batch_size": 2},
        "budget": {"max_parameters": 10**9}}))
    return path


@dataclass
class MainJob:
    """The main job submitted twice (stopped after its first trial, then resubmitted), and what
    the cluster did meanwhile."""
    run_dir: Path
    model_dir: str
    job: StoppedAndResubmitted
    cluster_dir: Path
    head_id: str
    nodes: list[dict]  # every node the cluster had when the second submission ended
    released_after: float  # seconds until no worker node was alive any more

    @property
    def finished(self) -> dict[str, int]:  # trial key -> result.json mtime when the first submission stopped
        return self.job.finished

    @property
    def logs(self) -> dict[str, str]:  # trial key -> its training log then
        return self.job.logs

    @property
    def second(self) -> subprocess.CompletedProcess:
        return self.job.second


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, tiny_causal_lm, autoscaling_cluster) -> MainJob:
    """One run of the main job at toy size through `ray job submit`: the first submission is
    stopped with `ray job stop` once a trial has finished, the same command is submitted again and
    completes; then the idle worker nodes must be released."""
    cluster, cluster_dir = autoscaling_cluster
    tmp_path = tmp_path_factory.mktemp("main-job")  # the run's storage path, shared by all nodes
    config = _sweep_config(tmp_path / "sweep.yaml", tiny_causal_lm)
    out = tmp_path / "runs"
    entrypoint = ["python", "-m", "pipelines.sweep", "--config", str(config), "--no-progress",
                  "--data-root", str(SHARED_DATA), "--output-dir", str(out)]
    job = stop_after_first_trial_and_resubmit(cluster, entrypoint, out / "sweep")
    nodes = _nodes(cluster)
    head_id = next(node["node_id"] for node in nodes if node["is_head_node"])
    ended, deadline = time.time(), time.time() + 180
    while any(node["state"] == "ALIVE" and not node["is_head_node"] for node in _nodes(cluster)):
        assert time.time() < deadline, "idle worker nodes were not released"
        time.sleep(5)
    return MainJob(out / "sweep", tiny_causal_lm, job, cluster_dir, head_id, nodes, time.time() - ended)


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
    # (Tune adds a suffix to the name) and the first attempt's may hold nothing: the newest
    # reported result is the trial's. (Not the newest file: Tune's driver copies its whole
    # staging directory to storage at each sync, which rewrites every file's mtime.)
    (experiment,) = run_dir.glob("tune-*")
    reported = {}
    for row in [*classified, *contrastive]:
        attempts = {path.parent: [json.loads(line) for line in path.read_text().splitlines()]
                    for path in experiment.glob(f"{row['key']}*/result.json")
                    if path.parent.name == row["key"] or path.parent.name.startswith(f"{row['key']}_")}
        attempts = {trial_dir: results for trial_dir, results in attempts.items() if results}
        assert attempts, row["key"]
        trial_dir, results = max(attempts.items(), key=lambda attempt: attempt[1][-1]["timestamp"])
        params = json.loads((trial_dir / "params.json").read_text())["trial"]
        objective = "classification" if "-sst2-" in row["key"] else "contrastive"
        assert params == {"key": row["key"], "model": "tiny", "base_model": main_job.model_dir,
                          "layers": row["layers"], "origins": ", ".join(row["origins"]),
                          "objective": objective, "dataset": "sst2" if objective == "classification" else ""}
        final = "accuracy" if objective == "classification" else "mteb_mean"
        assert final in results[-1] and results[-1][final] == row.get(final, row.get("accuracy"))
        reported[row["key"]] = [r for r in results[:-1] if "training_loss" in r and r["step"] == 3]
        events = sorted(trial_dir.glob("events.out.tfevents.*"))
        assert events and any(f"ray/tune/{final}".encode() in e.read_bytes() for e in events), row["key"]
    # Training ends seconds before the trial's evaluation does, and the trial polls every 5 s.
    assert any(reported.values()), reported


@pytest.mark.slow
def test_the_sweep_on_an_autoscaling_cluster(main_job):
    run_dir, job = main_job.run_dir, main_job.job
    second = job.second
    assert second.returncode == 0 and "succeeded" in second.stdout, (second.stdout + second.stderr)[-4000:]

    # The autoscaler launched worker nodes of the worker type, never more than its maximum at
    # once (the fixture waited until it had released them all once idle).
    workers = [node for node in main_job.nodes if not node["is_head_node"]]
    assert workers, "no worker node was launched"
    assert all(node["resources_total"].get("CPU") == 2 for node in workers)
    spans = [(_time(node["start_time_ms"]), _time(node["end_time_ms"]) if node["state"] == "DEAD" else float("inf"))
             for node in workers]
    assert max(sum(start <= at < end for start, end in spans) for at, _ in spans) <= MAX_WORKERS
    head = next(node for node in main_job.nodes if node["is_head_node"])
    assert head["resources_total"].get("CPU", 0) == 0
    print(f"worker nodes launched: {len(workers)}; released {main_job.released_after:.0f} s after the job")

    # Every trial of both routes (the report's completeness and the resume are checked above):
    # each Train worker rank ran on a worker node, never on the head.
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = summary["trials"] + summary["classification"]["trials"]
    assert trials and not summary["failed"]
    worker_ids, trained_on = {node["node_id"] for node in workers}, set()
    for row in trials:
        result = json.loads((run_dir / "trials" / row["key"] / "result.json").read_text())
        assert row["status"] == "done" and result["steps"] == 3
        placement = result["train_workers"]
        assert [worker["rank"] for worker in placement] == [0], placement
        assert all(worker["node_id"] in worker_ids for worker in placement), (placement, worker_ids)
        assert main_job.head_id not in {worker["node_id"] for worker in placement}
        trained_on |= {worker["node_id"] for worker in placement}
        # What a trial records points at the run's storage, never into a node's temp dir.
        for key in ("artifact", "training_log"):
            assert Path(result[key]).is_relative_to(run_dir), result[key]

    # Stopped after its first finished trial and submitted again (the finished trials' files
    # are checked above): the stop came midway.
    assert 0 < len(job.finished) < len(trials), "the sweep must stop midway"

    # No process on a worker node opened a file in the head's or another node's directory, and
    # the audit did run there: in the agents of every node launched, in the Train workers.
    node_dir = {node["node_id"]: main_job.cluster_dir / f"w{int(node['node_id'][-5:])}"
                for node in workers}  # the provider numbers its nodes: fff...0000N runs in w<N>/
    assert all("dashboard/agent.py" in (path / "audited.log").read_text() for path in node_dir.values())
    for node_id in trained_on:
        audited = (node_dir[node_id] / "audited.log").read_text()
        assert "default_worker.py" in audited, audited[-2000:]
    foreign = {path.parent.name: path.read_text()[-2000:]
               for path in main_job.cluster_dir.glob("w*/foreign-opens.log")}
    assert not foreign, foreign
