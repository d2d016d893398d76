"""The lowest sentence-transformers version pyproject.toml allows loads an artifact and gives
layercut's embeddings. That version is installed (without dependencies: torch, transformers and
the rest are this environment's) into a throwaway folder from the package registry, and a
subprocess that sees it first loads three artifacts: last_token ones with no remote code (text
only; text and closing template, where a text past max_length needs sentence-transformers' own
restore of the chat-template suffix after truncation, new in 5.6: what makes 5.6 the lower bound;
5.5 drops the closing tokens of such a text, and before 5.5 there is no chat mode and no
``sentence_transformers.base.modules`` for the text-span module), and a weighted_mean one with the
closing template pooled."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys, torch
from pathlib import Path
import sentence_transformers
assert sentence_transformers.__version__ == sys.argv[2], sentence_transformers.__version__
from tests.test_artifact_st import export, _both, _assert_equal
for pooling, closing in (("last_token", False), ("last_token", True), ("weighted_mean", True)):
    model_dir, prompt = export(Path(sys.argv[3]) / f"{pooling}-{closing}", sys.argv[1], 2, pooling, closing)
    (ours_d, st_d), (ours_q, st_q), _ = _both(model_dir, prompt, pooling)
    _assert_equal(ours_d, st_d, 1e-4)
    _assert_equal(ours_q, st_q, 1e-4)
print("lowest version ok", sentence_transformers.__version__)
"""


def lowest_allowed() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"sentence-transformers>=([0-9.]+),', text)
    assert match, "pyproject.toml names no lower bound for sentence-transformers"
    return match.group(1)


@pytest.mark.slow
def test_the_lowest_allowed_version_loads_the_artifact(tmp_path, smollm2_dir):
    version = lowest_allowed()
    if version.count(".") == 1:
        version += ".0"
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), f"sentence-transformers=={version}"],
        capture_output=True, text=True, timeout=300)
    if install.returncode != 0:
        reason = (install.stderr.strip().splitlines() or ["no output"])[-1]
        if any(word in install.stderr for word in ("NewConnectionError", "Could not fetch", "Network is unreachable",
                                                   "Temporary failure in name resolution", "No matching distribution")):
            pytest.skip(f"the package registry is unreachable: {reason}")
        pytest.fail(f"pip could not install sentence-transformers=={version}: {reason}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", CHECK, smollm2_dir, version, str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"lowest version ok {version}" in done.stdout
