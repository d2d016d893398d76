"""Local Ray clusters for the job tests (test_ray_job.py, test_main_job.py): the README's
shell, a head started with ports and a temp dir of its own and stopped by its process group (never
`ray stop`, which ends every Ray process on the machine), `ray job submit` against it, and the
main job stopped after its first finished trial and submitted again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from conftest import REPO, free_port

README = REPO / "README.md"


def readme_local_cluster_block() -> list[str]:
    """The commands of the README's local-cluster block (the code block after its
    ``<!-- test:local-cluster`` marker), one per entry, backslash continuations joined."""
    block = README.read_text().split("<!-- test:local-cluster", 1)[1].split("```bash\n", 1)[1]
    lines = block.split("```", 1)[0].replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def words(command: str) -> list[str]:
    return command.split("#")[0].split()


def readme_shell() -> tuple[dict[str, str], str]:
    """(environment, ray CLI) of the README's local-cluster block up to `ray start --head`, run
    as written: its exports, and its commands before the start (the auth token)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The suite's own ray.init() exports RAY_AUTH_MODE=token into this process (Ray 2.59+ turns
    # token auth on for new local clusters): drop it, so that only what the README sets counts.
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    commands = readme_local_cluster_block()
    start_at = next(i for i, command in enumerate(commands) if words(command) == ["ray", "start", "--head"])
    for command in commands[:start_at]:
        if command.startswith("export "):
            name, value = words(command)[1].split("=", 1)
            env[name] = value
        else:
            subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True, timeout=120)
    assert env.get("RAY_AUTH_MODE") == "token", "the README's block must switch token auth on"
    return env, str(bin_dir / "ray")


def own_ports() -> list[str]:
    """`ray start` flags giving a head every port of its own: the session's in-process Ray may
    already hold the defaults, and a job agent that cannot bind its port never accepts the job."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


@dataclass
class LocalCluster:
    api_address: str  # the dashboard's job-submission address
    gcs_address: str
    env: dict[str, str]  # the README's shell: its exports, the venv's bin on PATH
    ray_cli: str
    workdir: Path  # where README commands run

    def shell(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """One README command, run by bash in the copy as written (the job CLI finds this
        cluster's own dashboard port through RAY_API_SERVER_ADDRESS)."""
        return subprocess.run(["bash", "-c", command], cwd=self.workdir, capture_output=True, text=True,
                              env={**self.env, "RAY_API_SERVER_ADDRESS": self.api_address}, timeout=timeout)

    def submit(self, *entrypoint: str, wait: bool = True, timeout: float = 1200):
        """`ray job submit` of the repository with the packaged runtime env, in the README's shell;
        retries while the freshly started job server is not ready yet."""
        command = [self.ray_cli, "job", "submit", "--address", self.api_address, "--working-dir", str(REPO),
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
        return subprocess.run([self.ray_cli, "job", *args, "--address", self.api_address], env=self.env,
                              capture_output=True, text=True, timeout=300)


@contextmanager
def head_node(ray_cli: str, env: dict[str, str], temp_dir: str, *flags: str,
              gcs_port: int | None = None) -> Iterator[LocalCluster]:
    """`ray start --head --block` with its own ports, dashboard and ``temp_dir`` (short: Ray's
    socket paths must stay under the Unix limit); stopped at the end by its process group, which
    holds every process it started (and those its autoscaler launched)."""
    gcs_port, dashboard_port = gcs_port or free_port(), free_port()
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", *own_ports(), f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield LocalCluster(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", env, ray_cli, REPO)
    finally:
        # SIGTERM first (Ray's processes stop on their own), but not for long: `ray start`
        # stops its processes one after another, each with a grace period (about 30 s in all),
        # and nothing of a test cluster needs a graceful end.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)


@dataclass
class StoppedAndResubmitted:
    """A job submitted twice: stopped after its first finished trial, then submitted again."""
    finished: dict[str, int]  # trial key -> result.json mtime when the first submission stopped
    logs: dict[str, str]  # trial key -> its training log then
    second: subprocess.CompletedProcess


def stop_after_first_trial_and_resubmit(cluster: LocalCluster, entrypoint: list[str],
                                        run_dir: Path) -> StoppedAndResubmitted:
    """Submit the main job, `ray job stop` it once a trial of ``run_dir`` has finished, then
    submit the same command again and wait for it."""
    first = cluster.submit(*entrypoint, wait=False)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    job_id = re.search(r"raysubmit_\w+", first.stdout + first.stderr).group(0)
    deadline, asked = time.time() + 900, 0.0
    while not list(run_dir.glob("trials/*/result.json")):
        if time.time() - asked > 15:  # each `ray job status` is a Python process: not every second
            status, asked = cluster.job("status", job_id).stdout, time.time()
            assert "FAILED" not in status and "SUCCEEDED" not in status, cluster.job("logs", job_id).stdout[-3000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(1)
    stopped = cluster.job("stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    finished = {path.parent.name: path.stat().st_mtime_ns for path in run_dir.glob("trials/*/result.json")}
    logs = {name: (run_dir / "trials" / name / "finetune" / "training_log.csv").read_text() for name in finished}
    return StoppedAndResubmitted(finished, logs, cluster.submit(*entrypoint))
