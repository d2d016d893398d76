"""The main job on an autoscaling cluster, for real: Ray's own autoscaler in simulated multi-node
mode (the fake multi-node provider of Ray's autoscaler tests) on this machine. The head takes no
work (0 CPUs); one worker node type (2 CPUs, min 0, max 2) is added while the sweep's tasks and
trials pend, and released once idle. Each simulated node has its own Ray temp dir (the job's
working directory is unpacked there), and every Python process on a worker node records any file
it opens inside another node's directory (tests/_fake_nodes.py, tests/node_audit/): a path that
only the head has on a real cluster. The sweep, submitted with `ray job submit` and
`tune.autoscaling: true`, is stopped after its first finished trial and submitted again."""

from __future__ import annotations

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
        deadline = time.time() + 30
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
    """The contrastive route at toy size for an autoscaling cluster: a tiny random Llama (6
    layers) at 6, 3 and 1 layers, 2 fine-tuning steps on one Ray Train worker of 2 CPUs (a whole
    worker node), STSBenchmark cut to 16 pairs, no untrained baseline; every stage names its
    workers and device (the cluster's current resources say nothing of what will be added)."""
    model = {"model": {"name_or_path": model_dir}}
    cpu = {"use_gpu": False, "num_workers": 1}
    path.write_text(yaml.safe_dump({
        "name": "sweep", "grid": ["keep:1.0", 3, 1], "l3prune": False, "untrained_baseline": False,
        "models": [{"config": "smollm2-135m", "label": "tiny"}],
        "overrides": {
            "layer_loss": {**model, "data": {"num_batches": 2, "batch_size": 4},
                           "workers": {**cpu, "cpus_per_worker": 2}},
            "finetune": {**model, "encoder": {"max_length": 48}, "workers": {**cpu, "cpus_per_worker": 2},
                         "training": {"steps": 2, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 1, "learning_rate": 1e-3}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16,
                         "workers": {**cpu, "cpus_per_worker": 1}}},
        # Two trials at once, each on a worker node of its own; the third waits for one of them,
        # so the stop after the first finished trial always comes midway.
        "tune": {"autoscaling": True, "max_concurrent_trials": 2},
        "latency": {"texts": 8, "batch_size": 2},
        "budget": {"max_parameters": 10**9}}))
    return path


@dataclass
class AutoscalingJob:
    run_dir: Path
    cluster_dir: Path
    head_id: str
    job: StoppedAndResubmitted
    nodes: list[dict]  # every node the cluster had when the second submission ended
    released_after: float  # seconds until no worker node was alive any more


@pytest.fixture(scope="module")
def autoscaling_job(tmp_path_factory, tiny_causal_lm, autoscaling_cluster) -> AutoscalingJob:
    cluster, cluster_dir = autoscaling_cluster
    tmp_path = tmp_path_factory.mktemp("autoscaling-job")  # the run's storage path, shared by all nodes
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
    return AutoscalingJob(out / "sweep", cluster_dir, head_id, job, nodes, time.time() - ended)


@pytest.mark.slow
def test_the_sweep_on_an_autoscaling_cluster(autoscaling_job):
    run_dir, job = autoscaling_job.run_dir, autoscaling_job.job
    second = job.second
    assert second.returncode == 0 and "succeeded" in second.stdout, (second.stdout + second.stderr)[-4000:]

    # The autoscaler launched worker nodes of the worker type, never more than its maximum at
    # once (the fixture waited until it had released them all once idle).
    workers = [node for node in autoscaling_job.nodes if not node["is_head_node"]]
    assert workers, "no worker node was launched"
    assert all(node["resources_total"].get("CPU") == 2 for node in workers)
    spans = [(_time(node["start_time_ms"]), _time(node["end_time_ms"]) if node["state"] == "DEAD" else float("inf"))
             for node in workers]
    assert max(sum(start <= at < end for start, end in spans) for at, _ in spans) <= MAX_WORKERS
    head = next(node for node in autoscaling_job.nodes if node["is_head_node"])
    assert head["resources_total"].get("CPU", 0) == 0
    print(f"worker nodes launched: {len(workers)}; released {autoscaling_job.released_after:.0f} s after the job")

    # The report is complete: every depth trained, evaluated and measured.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["key"] for row in summary["trials"]] == ["tiny-l6", "tiny-l3", "tiny-l1"] and not summary["failed"]
    worker_ids, trained_on = {node["node_id"] for node in workers}, set()
    for row in summary["trials"]:
        assert row["status"] == "done" and -1 <= row["mteb_mean"] <= 1 and row["latency_ms"] > 0
        assert f"| tiny | {row['layers']}/6 |" in (run_dir / "report.md").read_text()
        result = json.loads((run_dir / "trials" / row["key"] / "result.json").read_text())
        assert result["steps"] == 2
        # Each Train worker rank ran on a worker node, never on the head.
        placement = result["train_workers"]
        assert [worker["rank"] for worker in placement] == [0], placement
        assert all(worker["node_id"] in worker_ids for worker in placement), (placement, worker_ids)
        assert autoscaling_job.head_id not in {worker["node_id"] for worker in placement}
        trained_on |= {worker["node_id"] for worker in placement}
        # What a trial records points at the run's storage, never into a node's temp dir.
        for key in ("artifact", "training_log"):
            assert Path(result[key]).is_relative_to(run_dir), result[key]
    assert (run_dir / "plots" / "score_vs_parameters.png").stat().st_size > 10_000

    # Stopped after its first finished trial and submitted again: finished trials not rerun.
    assert 0 < len(job.finished) < 3, "the sweep must stop midway"
    assert "resuming the Tune experiment" in second.stdout + second.stderr
    for name, mtime in job.finished.items():
        assert (run_dir / "trials" / name / "result.json").stat().st_mtime_ns == mtime
        assert (run_dir / "trials" / name / "finetune" / "training_log.csv").read_text() == job.logs[name]

    # No process on a worker node opened a file in the head's or another node's directory, and
    # the audit did run there: in the agents of every node launched, in the Train workers.
    node_dir = {node["node_id"]: autoscaling_job.cluster_dir / f"w{int(node['node_id'][-5:])}"
                for node in workers}  # the provider numbers its nodes: fff...0000N runs in w<N>/
    assert all("dashboard/agent.py" in (path / "audited.log").read_text() for path in node_dir.values())
    for node_id in trained_on:
        audited = (node_dir[node_id] / "audited.log").read_text()
        assert "default_worker.py" in audited, audited[-2000:]
    foreign = {path.parent.name: path.read_text()[-2000:]
               for path in autoscaling_job.cluster_dir.glob("w*/foreign-opens.log")}
    assert not foreign, foreign
