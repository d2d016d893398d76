"""The cluster files install from one source: cluster/requirements.txt, which agrees with what
scripts/cluster_requirements.py derives from pyproject.toml and constraints.txt. Each file is read
the way its tool reads it (Ray's own runtime-env parsing for job submission, YAML for the
launcher and KubeRay, the Dockerfile's FROM and RUN lines); the launcher's mount command runs
under bash with a mount that fails. No Docker, Kubernetes or cloud is needed: what only a real
cloud can show is the README's manual check."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

CLUSTER = REPO / "cluster"
REQUIREMENTS = CLUSTER / "requirements.txt"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirement_lines() -> list[str]:
    return [line for line in REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#")]


def _dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(spec) for spec in pyproject["project"]["dependencies"]]


def _constraint(name: str) -> str:
    return _script("cluster_requirements").pins((REPO / "constraints.txt").read_text())[name]


def _constraints_python() -> str:
    """The Python version constraints.txt was frozen with ("Python 3.11" in its header): "311"."""
    match = re.search(r"Python (\d)\.(\d+)", (REPO / "constraints.txt").read_text())
    assert match, "constraints.txt names no Python version in its header"
    return match.group(1) + match.group(2)


def test_requirements_file_is_pyproject_at_the_constraints_versions():
    """The checked-in file is what the script writes now; each line is a pyproject dependency
    (extras kept) at the exact version constraints.txt pins, which pyproject's range allows."""
    generator = _script("cluster_requirements")
    expected = generator.render((REPO / "pyproject.toml").read_text(), (REPO / "constraints.txt").read_text())
    assert REQUIREMENTS.read_text() == expected, "cluster/requirements.txt drifted: run python scripts/cluster_requirements.py"
    pinned = [Requirement(line) for line in _requirement_lines()]
    dependencies = _dependencies()
    assert [(r.name, r.extras) for r in pinned] == [(d.name, d.extras) for d in dependencies]
    for requirement, dependency in zip(pinned, dependencies):
        (spec,) = requirement.specifier
        assert spec.operator == "==" and dependency.specifier.contains(spec.version)
        assert spec.version == _constraint(canonicalize_name(requirement.name))


def test_the_generator_refuses_a_missing_or_out_of_range_pin():
    generator = _script("cluster_requirements")
    pyproject = '[project]\ndependencies = ["torch>=2.6,<3", "ray[tune]>=2.52"]\n'
    assert generator.render(pyproject, "torch==2.13.0\nRay==2.60.0\n").endswith("torch==2.13.0\nray[tune]==2.60.0\n")
    with pytest.raises(generator.RequirementsError, match="ray has no pin"):
        generator.render(pyproject, "torch==2.13.0\n")
    with pytest.raises(generator.RequirementsError, match=r"torch==3\.0\.0, outside .*<3"):
        generator.render(pyproject, "torch==3.0.0\nray==2.60.0\n")


def test_no_cluster_file_lists_a_dependency_by_hand():
    """No file in cluster/ but requirements.txt names a dependency with a version (the hand-kept
    lists that drifted), and every pip install in them reads requirements.txt or installs this
    project (the launcher machine's `pip install -e ".[aws]"`)."""
    names = [d.name for d in _dependencies()]
    for path in sorted(CLUSTER.iterdir()):
        if path == REQUIREMENTS:
            continue
        text = path.read_text()
        for name in names:
            assert not re.search(rf"\b{re.escape(name)}(\[[^\]]*\])?\s*(==|>=|<=|~=|<|>)", text, re.I), (path.name, name)
        for install in re.findall(r"pip install[^\n]*", text):
            assert re.search(r"(-r|--no-deps|-e) \S+", install), (path.name, install)


def test_job_submission_installs_the_requirements_file(monkeypatch):
    """`ray job submit --runtime-env cluster/runtime_env_pip.yaml` from the repository root, read by
    Ray's own parsing: the job's pip packages are the requirements file's lines; the plain runtime
    env installs nothing (for nodes that have the file's packages already)."""
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    monkeypatch.chdir(REPO)
    parsed = RuntimeEnv(**parse_runtime_env_args(runtime_env="cluster/runtime_env_pip.yaml")).to_dict()
    packages = [line for line in parsed["pip"]["packages"] if not line.startswith("#")]
    assert packages == _requirement_lines()
    plain = RuntimeEnv(**parse_runtime_env_args(runtime_env="cluster/runtime_env.yaml")).to_dict()
    assert not {"pip", "uv", "conda", "py_executable"} & plain.keys()


def test_dockerfile_is_rays_gpu_image_of_the_constraints_with_the_requirements():
    """FROM the rayproject/ray GPU image of constraints.txt's Ray and Python versions; the
    dependencies from the requirements file, then layercut itself without dependencies."""
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(_constraint('ray'))}-py{_constraints_python()}-(gpu|cu\d+)", base), base
    runs = re.findall(r"^RUN (.*)", text, re.M)
    copied = dict(re.findall(r"^COPY (?:--\S+ )*(\S+) (\S+)$", text, re.M))
    assert runs == [f"pip install --no-cache-dir -r {copied['cluster/requirements.txt']}",
                    "pip install --no-cache-dir --no-deps /home/ray/layercut"]
    # The build context (.dockerignore, an allow-list) holds what the Dockerfile copies.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    sources = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M)
    for source in (s for line in sources for s in line.split()):
        assert f"!{source}" in ignore, source


def test_launcher_installs_the_requirements_file_on_rays_image():
    launcher = yaml.safe_load((CLUSTER / "aws-autoscaling.yaml").read_text())
    remote = next(remote for remote, local in launcher["file_mounts"].items() if local == "cluster/requirements.txt")
    installs = [c for c in launcher["setup_commands"] if "pip" in c]
    assert installs == [f"pip install -q -r {remote}"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(_constraint('ray'))}-py{_constraints_python()}-(gpu|cu\d+)",
                        launcher["docker"]["image"])


def _run_mount_commands(tmp_path, mount_status: int, mounted: bool) -> list[int]:
    """Exit statuses of the launcher's initialization commands run by bash, with sudo, mount,
    mountpoint and mkdir replaced by stand-ins that exit as told (the real ones need root and EFS)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, status in (("mount", mount_status), ("mountpoint", 0 if mounted else 32), ("mkdir", 0)):
        (fake / name).write_text(f"#!/bin/sh\nexit {status}\n")
    (fake / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for script in fake.iterdir():
        script.chmod(0o755)
    launcher = yaml.safe_load((CLUSTER / "aws-autoscaling.yaml").read_text())
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    return [subprocess.run(["bash", "-c", command], env=env, timeout=30).returncode
            for command in launcher["initialization_commands"]]


def test_a_failed_shared_storage_mount_fails_the_launcher(tmp_path):
    """A mount that fails makes its command fail (the launcher then stops the node's setup); one
    that works, or a node already mounted (ray up run again), passes."""
    launcher_text = (CLUSTER / "aws-autoscaling.yaml").read_text()
    assert not re.search(r"\|\|\s*(true|:)\b|;\s*true\b", launcher_text)
    assert any(status != 0 for status in _run_mount_commands(tmp_path, mount_status=32, mounted=False))
    assert _run_mount_commands(tmp_path, mount_status=0, mounted=False) == [0, 0]
    assert _run_mount_commands(tmp_path, mount_status=32, mounted=True) == [0, 0]


def _containers(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def _claims(rayjob: dict) -> set[str]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return {v["persistentVolumeClaim"]["claimName"] for group in groups
            for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}


def test_rayjob_runs_the_dockerfile_image_on_the_shipped_volume_claim():
    """Every pod runs the one layercut image (its Ray version as the manifest's rayVersion and
    constraints.txt's), the runtime env installs nothing, and the claim the pods mount is the
    ReadWriteMany claim of cluster/storage.yaml."""
    rayjob = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == _constraint("ray")
    assert {c["image"] for c in _containers(rayjob)} == {"REGISTRY/layercut:0.1.0"}
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"layercut:{version}" in (CLUSTER / "Dockerfile").read_text()
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert not {"pip", "uv", "conda", "working_dir"} & runtime_env.keys()
    claim = yaml.safe_load((CLUSTER / "storage.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    assert _claims(rayjob) == {claim["metadata"]["name"]}


def test_rayjob_gives_every_pod_the_hf_token_secret():
    """Gated models: each pod reads HF_TOKEN from the hf-token Secret (optional: public models
    need none), the Secret the README tells users to create."""
    rayjob = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    for container in _containers(rayjob):
        (variable,) = [v for v in container.get("env", []) if v["name"] == "HF_TOKEN"]
        assert variable["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN", "optional": True}
    assert "kubectl create secret generic hf-token --from-literal=HF_TOKEN=" in (REPO / "README.md").read_text()


def test_the_aws_extra_brings_boto3_and_the_readme_installs_it():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [Requirement(spec).name for spec in extras["aws"]] == ["boto3"]
    assert '-e ".[aws]"' in (REPO / "README.md").read_text()


def test_runtime_env_json_adds_the_token_to_the_file(tmp_path):
    """scripts/runtime_env_json.py: the runtime env file plus HF_TOKEN, as Ray's job CLI parses
    --runtime-env-json; without HF_TOKEN, one error line and exit 2."""
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    command = [sys.executable, str(REPO / "scripts" / "runtime_env_json.py"), str(CLUSTER / "runtime_env.yaml")]
    done = subprocess.run(command, env={"HF_TOKEN": "hf_test"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    parsed = parse_runtime_env_args(runtime_env_json=done.stdout)
    expected = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert parsed == {**expected, "env_vars": {**expected["env_vars"], "HF_TOKEN": "hf_test"}}
    missing = subprocess.run(command, env={}, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "HF_TOKEN is not set" in missing.stderr
    # Other variables by name (an object store's keys), HF_TOKEN only when named then.
    keys = {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "secret-test"}
    named = [*command, "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY"]
    done = subprocess.run(named, env=keys, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert parse_runtime_env_args(runtime_env_json=done.stdout) == {**expected, "env_vars": {**expected["env_vars"], **keys}}
    unset = subprocess.run([*named, "--env", "AWS_REGION"], env=keys, capture_output=True, text=True, timeout=60)
    assert unset.returncode == 2 and unset.stderr == ("runtime_env_json: error: AWS_REGION is not set: export "
                                                      "it, or leave out --env AWS_REGION\n")
