"""The wheel holds what an installed layercut imports and reads: every route's modules, the run
store, the schemas and the packaged YAML (pyproject's packages.find and package-data). Built
offline with setuptools' own backend from a copy of the sources (a build in the checkout would
leave build/ and an egg-info there), in a subprocess (setuptools patches the interpreter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

PACKAGES = ("pipelines", "tasks")


def _modules(folder: str, pattern: str = "*.py") -> set[str]:
    """The checkout's files under ``folder`` matching ``pattern``, as wheel names (POSIX, from the
    repository root)."""
    return {path.relative_to(REPO).as_posix() for path in (REPO / folder).glob(pattern)}


def _wheel_names(tmp_path) -> set[str]:
    """The names in a wheel built from a copy of pyproject.toml, README.md and the packages."""
    source = tmp_path / "source"
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_wheel(sys.argv[1])", str(wheels)],
                   cwd=source, check=True, capture_output=True)
    [wheel] = wheels.glob("layercut-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_holds_the_routes_run_store_schemas_and_packaged_yaml(tmp_path):
    names = _wheel_names(tmp_path)
    routes = _modules("pipelines/routes", "*/*.py")
    assert {"pipelines/routes/contrastive/trial.py", "pipelines/routes/classification/trial.py"} <= routes
    expected = (routes | _modules("pipelines/routes") | _modules("pipelines/run_store")
                | _modules("pipelines/schemas") | _modules("pipelines/configs", "**/*.yaml")
                | {"tasks/evaluation/mteb_presets.yaml",
                   "tasks/classification/classification_datasets.yaml"})
    assert sorted(expected - names) == []
