"""Jobs submitted with `ray job submit` to a real local cluster started as the README says, with
Ray's default token authentication: the README's stage-1 block as written, and a refused token.
(The main job through `ray job submit`, its stop and resume: test_main_job.py, on an autoscaling
cluster of simulated nodes.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import pytest

from _clusters import head_node, readme_local_cluster_block, readme_shell, words
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
        with head_node(ray_cli, env, temp_dir, "--num-cpus=2") as cluster:
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
    run_dir = local_cluster.workdir / "runs" / "job" / "layer-loss-smollm2-135m"
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


def test_working_dir_upload_stays_small():
    """What `ray job submit --working-dir .` uploads (files git does not ignore) is far under
    Ray's 100 MiB limit: models, data and results never live in the repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]
    total_mib = sum(path.stat().st_size for path in files) / 2**20
    assert files and total_mib < 5, f"working dir upload would be {total_mib:.1f} MiB"


def test_a_relative_output_dir_inside_a_ray_job_copy_is_refused(tmp_path, monkeypatch, capsys):
    """`ray job submit --working-dir .` runs the entry point in a temporary copy of the working
    directory (<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>, Ray's layout): a
    relative --output-dir there (the default, `runs`) would lose the results with the job. Every
    command refuses it before any work; an absolute path or a URI passes the check."""
    from pipelines.cli import main
    from pipelines.ray_runtime import refuse_output_in_a_job_copy

    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    for command in ("layer-loss", "finetune", "evaluate", "evaluate-classifier", "run"):
        assert main([command, "--no-progress"]) == 2, command
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"layercut: error: output_dir 'runs' is relative and this runs as a Ray job in its "
                         f"temporary copy of the working directory ({copy}): results there are lost with the "
                         "job and each node writes its own; give an absolute path on storage every node "
                         "mounts (README: Shared storage) or an s3:// or gs:// URI"], command
    assert list(copy.iterdir()) == []  # nothing was written or started
    for fine in (str(tmp_path / "runs"), "s3://bucket/runs"):
        refuse_output_in_a_job_copy(fine, str(copy))
    refuse_output_in_a_job_copy("runs", str(tmp_path))  # outside a job: relative is the user's choice
