"""Stage 1 submitted with `ray job submit` to a real local cluster started with `ray start --head`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, TRIPLETS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_to_a_local_cluster(tmp_path, tiny_model_dirs, ray_cluster):
    # ray_cluster: the session's in-process Ray runs alongside, as in the full suite.
    bin_dir = Path(sys.executable).parent
    ray_cli = str(bin_dir / "ray")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # A short temp dir: Ray's socket paths must stay under the Unix limit.
    temp_dir = tempfile.mkdtemp(prefix="lc-ray-", dir="/tmp")
    gcs_port, dashboard_port = _free_port(), _free_port()
    # Every port of its own: the session's in-process Ray (ray_cluster fixture) may already hold
    # the defaults, and a job agent that cannot bind its port never accepts the job.
    own_ports = [f"--dashboard-agent-listen-port={_free_port()}",
                 f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                 f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
                 f"--object-manager-port={_free_port()}"]
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2",
         f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         *own_ports, f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    out = tmp_path / "runs"
    try:
        submit = [ray_cli, "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
                  "python", "-m", "pipelines.layer_loss", "--no-progress", "--output-dir", str(out),
                  "--name", "job", f"model.name_or_path={tiny_model_dirs['llama']}",
                  f"data.source={TRIPLETS}", "data.num_batches=2", "data.batch_size=4"]
        deadline = time.time() + 180
        not_ready = ("Connection", "No available agent", "try again later")
        while True:  # the job server and its agent need a few seconds after `ray start`
            result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            output = result.stderr + result.stdout
            if result.returncode == 0 or time.time() > deadline or not any(s in output for s in not_ready):
                break
            time.sleep(3)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "succeeded" in result.stdout
        # The job read the uploaded working dir, ran on the cluster and wrote to --output-dir.
        selection = json.loads((out / "job" / "selection.json").read_text())
        assert selection["num_layers"] == 6 and 1 <= selection["small"]["layers"] <= 3
        assert (out / "job" / "layer_loss.png").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_working_dir_upload_stays_small():
    """What `ray job submit --working-dir .` uploads (files git does not ignore) is far under
    Ray's 100 MiB limit: models, data and results never live in the repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]
    total_mib = sum(path.stat().st_size for path in files) / 2**20
    assert files and total_mib < 5, f"working dir upload would be {total_mib:.1f} MiB"
