"""Command-line overrides (the colon-in-an-override case): a key that holds text takes the value
as written; any other value is YAML; an override that cannot be read is one line naming it."""

from __future__ import annotations

import pytest

from pipelines.cli import main
from pipelines.config import find_config, load_config, parse_overrides
from pipelines.classify import ClassifyConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.finetune import FinetuneConfig
from pipelines.layer_loss import LayerLossConfig
from pipelines.sweep import SweepConfig, resolve_models

# The case's two values, and more that YAML would read as something other than this text.
TEXTS = ["Task: represent the text", "[draft] represent the text", "{x}", "yes", "1945",
         "- a list?", "a # not a comment", "  spaced  ", "'quoted'", "null-ish"]
STAGES = [(LayerLossConfig, "layer_loss"), (FinetuneConfig, "finetune"), (EvaluateConfig, "evaluate")]


@pytest.mark.parametrize("model, stage", STAGES)
@pytest.mark.parametrize("text", TEXTS)
def test_text_keys_take_the_value_as_written(model, stage, text):
    config = load_config(model, find_config("smollm2-135m", stage), [f"encoder.system_prompt={text}"])
    assert config.encoder.system_prompt == text


def test_other_keys_are_yaml_and_null_stays_null():
    tree = parse_overrides(["encoder.system_prompt=null", "encoder.instruction_separator=: ",
                            "data.num_batches=3", "workers.num_workers=auto", "workers.use_gpu=false",
                            "data.columns.query=q: text", "model.revision=~", "name=2024"],
                           LayerLossConfig)
    assert tree == {"encoder": {"system_prompt": None, "instruction_separator": ": "},
                    "data": {"num_batches": 3, "columns": {"query": "q: text"}},
                    "workers": {"num_workers": "auto", "use_gpu": False},
                    "model": {"revision": None}, "name": "2024"}
    assert parse_overrides(["tasks=[STS12, STSBenchmark]"], EvaluateConfig) == {
        "tasks": ["STS12", "STSBenchmark"]}
    assert parse_overrides(["classification.template=Review: {text}\nSentiment:"], ClassifyConfig) == {
        "classification": {"template": "Review: {text}\nSentiment:"}}


def test_sweep_overrides_are_typed_by_their_stage(tmp_path):
    text = "Task: represent the text"
    config = load_config(SweepConfig, find_config("smollm2-135m", "run"), [
        f"output_dir={tmp_path}", f"overrides.layer_loss.encoder.system_prompt={text}",
        f"overrides.finetune.encoder.system_prompt=[draft] {text}", "overrides.finetune.training.steps=7"])
    plan = resolve_models(config)[0]
    assert plan.layer_loss.encoder.system_prompt == text
    assert plan.finetune.encoder.system_prompt == f"[draft] {text}"
    assert plan.finetune.training.steps == 7


@pytest.mark.parametrize("argv, message", [
    (["layer-loss", "data.num_batches=[1"], "override 'data.num_batches=[1': the value is not valid "
                                            "YAML (expected ',' or ']', but got '<stream end>')"),
    (["finetune", "training.steps={a: 1"], "override 'training.steps={a: 1': the value is not valid YAML"),
    (["evaluate", "encoder.max_length=abc"],
     "invalid config: encoder.max_length: Input should be a valid integer, unable to parse string "
     "as an integer (from override 'encoder.max_length=abc')"),
    (["layer-loss", "encoder.system_prompt.x=1"],
     "override key 'encoder.system_prompt.x': 'encoder.system_prompt' is a value, not a section"),
    (["run", "overrides.finetune.training.steps=[2"], "override 'overrides.finetune.training.steps=[2'"),
    (["layer-loss", "data..seed=1"], "override 'data..seed=1' is not of the form key.sub=value"),
])
def test_unreadable_overrides_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layercut: error: ") and message in err[0], err
