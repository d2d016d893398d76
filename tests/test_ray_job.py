"""Jobs submitted with `ray job submit` to a real local cluster started with `ray start --head`:
stage 1 alone, and the main job (the sweep) with a stop midway and a resume."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_DATA, TRIPLETS, free_port



@dataclass
class LocalCluster:
    address: str  # the dashboard's job-submission address
    env: dict[str, str]
    ray_cli: str

    def submit(self, *entrypoint: str, wait: bool = True, timeout: float = 1200):
        """`ray job submit` of the repository with the packaged runtime env; retries while the
        freshly started job server is not ready yet."""
        command = [self.ray_cli, "job", "submit", "--address", self.address, "--working-dir", str(REPO),
                   "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"),
                   *([] if wait else ["--no-wait"]), "--", *entrypoint]
        deadline = time.time() + 180
        not_ready = ("Connection", "No available agent", "try again later")
        while True:
            result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
            output = result.stderr + result.stdout
            if result.returncode == 0 or time.time() > deadline or not any(s in output for s in not_ready):
                return result
            time.sleep(3)

    def job(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.ray_cli, "job", *args, "--address", self.address], env=self.env,
                              capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def local_cluster(ray_cluster):
    """`ray start --head` on ports and a temp dir of its own (the session's in-process Ray, the
    ray_cluster fixture, runs alongside as in the full suite); stopped at the end."""
    bin_dir = Path(sys.executable).parent
    ray_cli = str(bin_dir / "ray")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # A short temp dir: Ray's socket paths must stay under the Unix limit.
    temp_dir = tempfile.mkdtemp(prefix="lc-ray-", dir="/tmp")
    gcs_port, dashboard_port = free_port(), free_port()
    # Every port of its own: the session's in-process Ray may already hold the defaults, and a
    # job agent that cannot bind its port never accepts the job.
    own_ports = [f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
                 f"--object-manager-port={free_port()}"]
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2",
         f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         *own_ports, f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield LocalCluster(f"http://127.0.0.1:{dashboard_port}", env, ray_cli)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_to_a_local_cluster(tmp_path, tiny_model_dirs, local_cluster):
    out = tmp_path / "runs"
    result = local_cluster.submit(
        "python", "-m", "pipelines.layer_loss", "--no-progress", "--output-dir", str(out),
        "--name", "job", f"model.name_or_path={tiny_model_dirs['llama']}",
        f"data.source={TRIPLETS}", "data.num_batches=2", "data.batch_size=4")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout
    # The job read the uploaded working dir, ran on the cluster and wrote to --output-dir.
    selection = json.loads((out / "job" / "selection.json").read_text())
    assert selection["num_layers"] == 6 and 1 <= selection["small"]["layers"] <= 3
    assert (out / "job" / "layer_loss.png").exists()


def _sweep_config(path: Path, model_dir: str) -> Path:
    """The whole pipeline at toy size: a tiny random Llama (6 layers), the L3Prune picks and all
    layers, 3 fine-tuning steps on 2 Ray Train workers, STSBenchmark cut to 16 pairs."""
    path.write_text(yaml.safe_dump({
        "name": "sweep", "grid": [1.0], "l3prune": True,
        "models": [{"config": "smollm2-135m", "label": "tiny"}],
        "overrides": {
            "layer_loss": {"model": {"name_or_path": model_dir},
                           "data": {"num_batches": 2, "batch_size": 4}},
            "finetune": {"model": {"name_or_path": model_dir}, "encoder": {"max_length": 48},
                         "training": {"steps": 3, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 1, "learning_rate": 1e-3}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16,
                         "workers": {"cpus_per_worker": 1}}},
        "latency": {"texts": 8, "batch_size": 2},
        "budget": {"max_parameters": 10**9}}))
    return path


@pytest.mark.slow
def test_the_main_job_through_ray_job_submit_and_its_resume(tmp_path, tiny_model_dirs, local_cluster):
    out = tmp_path / "runs"
    config = _sweep_config(tmp_path / "sweep.yaml", tiny_model_dirs["llama"])
    entrypoint = ["python", "-m", "pipelines.sweep", "--config", str(config), "--no-progress",
                  "--data-root", str(SHARED_DATA), "--output-dir", str(out)]
    run_dir = out / "sweep"

    # First submission: stopped with `ray job stop` once the first trial has finished.
    first = local_cluster.submit(*entrypoint, wait=False)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    job_id = re.search(r"raysubmit_\w+", first.stdout + first.stderr).group(0)
    deadline = time.time() + 900
    while not list(run_dir.glob("trials/*/result.json")):
        status = local_cluster.job("status", job_id).stdout
        assert "FAILED" not in status and "SUCCEEDED" not in status, local_cluster.job("logs", job_id).stdout[-3000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(1)
    stopped = local_cluster.job("stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    finished = {path.parent.name: path.stat().st_mtime_ns for path in run_dir.glob("trials/*/result.json")}
    logs = {name: (run_dir / "trials" / name / "finetune" / "training_log.csv").read_text() for name in finished}
    selection = json.loads((run_dir / "layer-loss" / "tiny" / "selection.json").read_text())
    depths = sorted({6, selection["small"]["layers"], selection["large"]["layers"]}, reverse=True)
    keys = [f"tiny-l{depth}" for depth in depths]
    assert len(depths) >= 2 and len(finished) < len(depths), "the sweep must stop midway"

    # Second submission: the same command resumes and completes.
    second = local_cluster.submit(*entrypoint)
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
    for plot in ("layer_loss-tiny.png", "score_vs_parameters.png", "training_loss.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 10_000


def test_working_dir_upload_stays_small():
    """What `ray job submit --working-dir .` uploads (files git does not ignore) is far under
    Ray's 100 MiB limit: models, data and results never live in the repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]
    total_mib = sum(path.stat().st_size for path in files) / 2**20
    assert files and total_mib < 5, f"working dir upload would be {total_mib:.1f} MiB"
