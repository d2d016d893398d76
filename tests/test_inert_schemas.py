"""Validating a config does no I/O (issue 15, item 2): the presets are package data, and what a
config points at is read when a run starts (pipelines/resolve.py)."""

from __future__ import annotations

import builtins
import io
import pathlib
from contextlib import contextmanager


@contextmanager
def no_io(monkeypatch):
    """Within the block, any file opened, read or looked at fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"I/O during validation: {args[:1]}")

    with monkeypatch.context() as patched:
        for name in ("read_text", "read_bytes", "open", "exists", "is_dir", "is_file"):
            patched.setattr(pathlib.Path, name, refuse)
        patched.setattr(builtins, "open", refuse)
        patched.setattr(io, "open", refuse)
        yield


def test_stage_configs_validate_without_reading_files(tmp_path, monkeypatch):
    from pipelines.schemas.evaluate import EvaluateConfig
    from pipelines.schemas.finetune import FinetuneConfig
    from pipelines.schemas.sweep import SweepConfig
    from tasks.classification.classification_presets import PRESETS

    with no_io(monkeypatch):
        tuned = FinetuneConfig.model_validate({"objective": "classification",
                                               "classification": {"dataset": "trec", "train_split": "x"}})
        sweep = SweepConfig.model_validate({"models": [{"config": "smollm2-135m"}],
                                            "classification": {"datasets": ["sst2", "trec"]}})
        artifact = {"base_model": "smollm2-135m", "layers": 6}
        config = EvaluateConfig(output_dir=str(tmp_path), model={"name_or_path": str(tmp_path / "model")})
        run_dir = config.run_dir("0123456789abcdef", artifact)
    # The preset filled what the config left unset; what it set wins.
    assert tuned.classification.template == PRESETS["trec"]["template"]
    assert tuned.classification.train_split == "x"
    assert sweep.classification.datasets == ["sst2", "trec"]
    assert run_dir == tmp_path / "eval-smollm2-135m-l6-01234567"


def test_the_presets_are_the_packaged_yaml():
    import yaml

    from tasks.classification.classification_presets import PRESETS, PRESETS_FILE

    assert {name: dict(preset) for name, preset in PRESETS.items()} == yaml.safe_load(PRESETS_FILE.read_text())


def test_stage_2_lends_the_data_root_to_classification_data_without_patching_the_caller():
    from pipelines.routes.registry import ROUTES
    from pipelines.schemas.finetune import FinetuneConfig

    def finetune_config(config):  # what stage 2 runs: its objective's route resolves the config
        return ROUTES[config.objective].training.resolve(config)

    given = FinetuneConfig.model_validate({"objective": "classification", "data": {"data_root": "/mirror"}})
    resolved = finetune_config(given)
    assert resolved.classification.data_root == "/mirror" and given.classification.data_root is None
    own = FinetuneConfig.model_validate({"objective": "classification", "data": {"data_root": "/mirror"},
                                         "classification": {"data_root": "/other"}})
    assert finetune_config(own).classification.data_root == "/other"
    contrastive = FinetuneConfig.model_validate({"data": {"data_root": "/mirror"}})
    assert finetune_config(contrastive).classification.data_root is None
