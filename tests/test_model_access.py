"""A model the run cannot load stops the run before Ray starts, in one line naming the model and
the fix. The offline path is real: HF_HUB_OFFLINE=1 in a fresh process with a Hugging Face cache
of its own (huggingface_hub reads both when imported). The hub's answers are huggingface_hub's own
exceptions raised in place of its request, since no test reaches the network."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import httpx2
import pytest
import yaml
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from conftest import REPO
from tasks.errors import LayercutError
from tasks.model.model_access import HUB_TIMEOUT_S, check_model_access

GATED = "meta-llama/Meta-Llama-3-8B-Instruct"


def _offline_env(hf_home) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home),
            "HOME": str(hf_home.parent)}


def _cache_model(hf_home, repo: str, commit: str = "0" * 40) -> None:
    """``repo``'s config in the hub cache layout at its main revision, as `hf download` leaves it."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")


CHECKS = """
import json, sys
from tasks.errors import LayercutError
from tasks.model.model_access import HUB_TIMEOUT_S, check_model_access
results = {}
for name, revision in json.loads(sys.argv[1]):
    try:
        check_model_access(name, revision)
        results[f"{name}@{revision}"] = "ok"
    except LayercutError as error:
        results[f"{name}@{revision}"] = str(error)
print(json.dumps(results))
"""


def test_offline_the_cache_and_local_models_decide(tmp_path):
    """With HF_HUB_OFFLINE=1: a hub model in the cache passes (not at another revision), one not
    in it fails naming the fix; a built-in model and a local directory pass without the hub."""
    hf_home = tmp_path / "hf"
    _cache_model(hf_home, "org/cached")
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    cases = [["org/cached", None], ["org/cached", "v2"], [GATED, None], ["smollm2-135m", None], [str(local), None]]
    done = subprocess.run([sys.executable, "-c", CHECKS, json.dumps(cases)], env=_offline_env(hf_home),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["org/cached@None"] == results["smollm2-135m@None"] == results[f"{local}@None"] == "ok"
    for key in ("org/cached@v2", f"{GATED}@None"):
        assert "is not in the Hugging Face cache" in results[key] and "HF_HUB_OFFLINE is set" in results[key]
    assert results[f"{GATED}@None"] == (
        f"model {GATED} is not in the Hugging Face cache ({hf_home / 'hub'}) and HF_HUB_OFFLINE is set: "
        f"pre-download it where the hub is reachable (`hf download {GATED}` with the same HF_HOME), "
        "or unset HF_HUB_OFFLINE")


def test_an_unreachable_model_stops_the_run_before_ray_in_one_line(tmp_path):
    """`python -m pipelines.sweep` (as `ray job submit` runs it) with a hub model that the offline
    cache lacks: exit 2, one `layercut: error:` line naming the model, no traceback, and nothing
    started: no Ray, no run record."""
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "name": "gated", "models": [{"config": "smollm2-135m", "objectives": ["classification"]}],
        "classification": {"datasets": ["sst2"], "layers": [1]},
        "overrides": {"finetune": {"model": {"name_or_path": GATED}}}}))
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    done = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--config", str(config), "--no-progress",
                           "--output-dir", str(tmp_path / "runs")], env=_offline_env(hf_home), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Ray" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("layercut: error:")]
    assert len(errors) == 1 and GATED in errors[0] and "hf download" in errors[0], done.stderr
    assert not (tmp_path / "runs" / "gated" / "sweep.json").exists()


def _hub_answers(monkeypatch, token: str | None, info: Exception | None = None, access: Exception | None = None,
                 gated: bool = True) -> list[tuple]:
    """The hub online, answering ``model_info`` with ``info`` raised (None: the model's public
    metadata, ``gated`` or not) and ``auth_check`` with ``access`` raised (None: access granted),
    with ``token`` as the token in use. Returns the calls made, in order."""
    import huggingface_hub

    calls = []

    def model_info(self, repo_id, revision=None, timeout=None, **kwargs):
        calls.append(("model_info", repo_id, revision, timeout))
        if info is not None:
            raise info
        return SimpleNamespace(id=repo_id, gated="manual" if gated else False)

    def auth_check(self, repo_id, **kwargs):
        calls.append(("auth_check", repo_id))
        if access is not None:
            raise access

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "auth_check", auth_check)
    return calls


def _refusal(cls, status: int):
    """huggingface_hub's exception ``cls`` as it raises it for an HTTP ``status`` answer."""
    response = httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{GATED}"))
    return cls(f"{status} Client Error: access to model {GATED} is restricted", response=response)


def test_a_gated_model_without_a_token_names_the_license_page_and_hf_token(monkeypatch):
    _hub_answers(monkeypatch, token=None, access=_refusal(GatedRepoError, 401))
    with pytest.raises(LayercutError) as caught:
        check_model_access(GATED)
    assert str(caught.value) == (
        f"model {GATED} is gated and no Hugging Face token is set: accept its license on "
        f"https://huggingface.co/{GATED}, then set HF_TOKEN to a read token of that account; "
        "on a cluster, pass it to every node (README, 'Gated and private models')")


def test_a_gated_model_the_token_cannot_read_says_accept_the_license(monkeypatch):
    _hub_answers(monkeypatch, token="hf_test", access=_refusal(GatedRepoError, 403))
    with pytest.raises(LayercutError, match=rf"model {GATED} is gated and the Hugging Face token in use "
                       rf"has no access: accept its license on https://huggingface.co/{GATED}"):
        check_model_access(GATED)


def test_a_private_or_mistyped_model_says_check_the_id_or_token(monkeypatch):
    _hub_answers(monkeypatch, token=None, info=_refusal(RepositoryNotFoundError, 404))
    with pytest.raises(LayercutError, match=r"model org/typo was not found on the Hugging Face hub .*"
                       r"check the id, or set HF_TOKEN"):
        check_model_access("org/typo")


def test_an_unreachable_hub_falls_back_to_the_cache(monkeypatch, tmp_path):
    """No answer from the hub: a cached model passes (the loaders use the cache then too); one not
    cached fails saying to check the network or pre-download."""
    import huggingface_hub

    _hub_answers(monkeypatch, token=None, info=httpx2.ConnectError("[Errno -2] Name or service not known"))
    _cache_model(tmp_path, "org/cached")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    check_model_access("org/cached")
    with pytest.raises(LayercutError, match=r"cannot reach the Hugging Face hub to check model org/other "
                       r"\(\[Errno -2\] Name or service not known\) and it is not in the local cache"):
        check_model_access("org/other")


def test_a_missing_revision_names_it(monkeypatch):
    _hub_answers(monkeypatch, token=None, info=_refusal(RevisionNotFoundError, 404))
    with pytest.raises(LayercutError, match=r"model org/name has no revision 'v9' on the Hugging Face hub: "
                       r"check model.revision"):
        check_model_access("org/name", "v9")


def test_granted_access_and_missing_local_models(monkeypatch, tmp_path):
    """Access granted: the check returns, having asked a gated model's access and a public one's
    metadata only, within the timeout; a local path that is not a model fails as resolve_model
    would, without the hub."""
    calls = _hub_answers(monkeypatch, token="hf_test")
    check_model_access(GATED)
    assert calls == [("model_info", GATED, None, HUB_TIMEOUT_S), ("auth_check", GATED)]
    calls = _hub_answers(monkeypatch, token=None, gated=False)
    check_model_access("org/public", "v1")
    assert calls == [("model_info", "org/public", "v1", HUB_TIMEOUT_S)]
    with pytest.raises(LayercutError, match="GGUF model file not found"):
        check_model_access(str(tmp_path / "model.gguf"))
    with pytest.raises(LayercutError, match="unknown model"):
        check_model_access(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(LayercutError, match="has no config.json"):
        check_model_access(str(tmp_path / "empty-model"))
