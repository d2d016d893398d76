"""Chat templates from the failure cases: one that drops the system turn (early Phi-3), one that
writes today's date into a system turn (Llama 3.1/3.2's ``strftime_now``)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pytest

from conftest import SHARED_CASES
from pipelines.cli import main
from tasks.errors import LayercutError
from tasks.model.prompts import PromptConfig, PromptFormatter

TEMPLATES = json.loads((SHARED_CASES / "templates" / "chat_templates.json").read_text())
SYSTEM = "Represent the text for retrieval."


def _with_template(smollm2_dir, name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = TEMPLATES[name]
    return tokenizer


def _model_with_template(tmp_path, model_dir: str, name: str) -> str:
    """A copy of a tiny model whose tokenizer carries the case's template."""
    from transformers import AutoTokenizer

    target = tmp_path / f"model-{name}"
    shutil.copytree(model_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = TEMPLATES[name]
    tokenizer.save_pretrained(target)
    return str(target)


def test_a_template_that_drops_the_system_turn_refuses_a_system_prompt(smollm2_dir):
    tokenizer = _with_template(smollm2_dir, "no_system_role")
    plain = PromptFormatter(tokenizer, PromptConfig())
    assert (plain.prefix, plain.suffix) == ("<|im_start|><|user|>\n", "<|end|>\n<|assistant|>\n")
    with pytest.raises(LayercutError) as error:
        PromptFormatter(tokenizer, PromptConfig(system_prompt=SYSTEM))
    assert str(error.value) == (
        f"the chat template of {tokenizer.name_or_path} drops the system turn, so "
        f"encoder.system_prompt ({SYSTEM!r}) would never reach the model; unset it or use a "
        "tokenizer whose template renders system messages")
    # Without a chat template there is no system turn either: the prompt would be dropped too.
    with pytest.raises(LayercutError, match="encoder.system_prompt needs the chat template"):
        PromptFormatter(tokenizer, PromptConfig(use_chat_template=False, system_prompt=SYSTEM))
    # A template with a system role takes it (the dated one puts it in its system turn).
    dated = PromptFormatter(_with_template(smollm2_dir, "dated_system_turn"),
                            PromptConfig(system_prompt=SYSTEM))
    assert dated.prefix.endswith(f"\n\n{SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")


@pytest.mark.parametrize("stage", ["layer-loss", "evaluate"])
def test_cli_refuses_before_recording_anything(tmp_path, capsys, tiny_model_dirs, stage):
    model = _model_with_template(tmp_path, tiny_model_dirs["llama"], "no_system_role")
    extra = ["--data-root", str(SHARED_CASES.parent / "data"), "--tasks", "STS12"] \
        if stage == "evaluate" else []
    code = main([stage, "--output-dir", str(tmp_path / "runs"), "--name", "r", "--no-progress",
                 *extra, f"model.name_or_path={model}", f"encoder.system_prompt={SYSTEM}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drops the system turn" in err[0], err
    assert not (tmp_path / "runs" / "r" / "config.yaml").exists()


class _Clock:
    """Sets what transformers' ``strftime_now`` template function takes for now."""

    def __init__(self, monkeypatch):
        import transformers.utils.chat_template_utils as utils

        self.monkeypatch, self.utils = monkeypatch, utils

    def set(self, day: datetime) -> None:
        class Fixed(datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        self.monkeypatch.setattr(self.utils, "datetime", Fixed)


DAYS = [datetime(2026, 11, 29, 23, 0), datetime(2026, 11, 30, 1, 0)]


def test_dated_template_renders_the_same_on_any_day(smollm2_dir, monkeypatch):
    tokenizer = _with_template(smollm2_dir, "dated_system_turn")
    clock = _Clock(monkeypatch)
    direct, ours = [], []
    for day in DAYS:
        clock.set(day)
        direct.append(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False))
        formatter = PromptFormatter(tokenizer, PromptConfig(system_prompt=SYSTEM))
        ours.append((formatter.prefix, formatter.suffix, formatter(["some text"])["input_ids"].tolist()))
    # The clock is what the template reads: rendered directly, the two days differ ...
    assert "Today Date: 29 Nov 2026" in direct[0] and "Today Date: 30 Nov 2026" in direct[1]
    # ... and layercut's inputs do not.
    assert ours[0] == ours[1]
    assert ours[0][0] == ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                          f"December 2023\nToday Date: 26 Jul 2024\n\n{SYSTEM}<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\n")


def _export(tmp_path, model_dir: str, prompt: PromptConfig):
    """The artifact of ``model_dir`` cut to 2 layers with an untrained adapter."""
    from tasks.export.artifact import ArtifactInfo, export_artifact
    from tasks.model.lora import LoraSettings, add_lora
    from tasks.model.models import ModelSource, ModelSpec

    spec = ModelSpec(ModelSource(model_dir, True), layers=2, dtype="float32", device="cpu")
    model, _ = spec.load()
    add_lora(model, LoraSettings()).save_pretrained(tmp_path / "adapter")
    info = ArtifactInfo(
        base_model=model_dir, base_model_path=model_dir, layers=2, total_layers=6, parameters=1,
        parameters_full=2, pooling="weighted_mean", prompt=prompt,
        training={"learning_rate": 2e-4, "warmup_steps": 0, "schedule": "linear", "batch_size": 4,
                  "seed": 42},
        lora={"r": 16, "alpha": 32, "dropout": 0.05}, loss_scale=50.0, final_loss=None,
        steps_done=0, workers=1, data="none")
    return export_artifact(spec, tmp_path / "adapter", tmp_path / "artifact", info)


def test_artifact_records_the_wrapper_and_evaluation_uses_it(tmp_path, tiny_model_dirs, monkeypatch):
    from pipelines.evaluate import EvaluateConfig, _evaluation_model
    from tasks.export.artifact import read_layercut_file

    _Clock(monkeypatch).set(DAYS[0])
    model = _model_with_template(tmp_path, tiny_model_dirs["llama"], "dated_system_turn")
    prompt = PromptConfig(system_prompt=SYSTEM, max_length=64)
    artifact = _export(tmp_path, model, prompt)
    recorded = read_layercut_file(artifact)["prompt"]
    expected = PromptFormatter(_with_template(model, "dated_system_turn"), prompt)
    assert (recorded["prefix"], recorded["suffix"]) == (expected.prefix, expected.suffix)
    assert "26 Jul 2024" in recorded["prefix"]
    # sentence-transformers renders inputs with the recorded prefix too (its embedding template).
    template = json.loads((artifact / "sentence_bert_config.json").read_text())[
        "processing_kwargs"]["chat_template"]["chat_template"]
    assert json.dumps(recorded["prefix"], ensure_ascii=False) in template
    # Another day, and a template that now renders something else: evaluation still wraps texts
    # in the recorded prefix, never in a new rendering.
    _Clock(monkeypatch).set(DAYS[1])
    config_path = next(artifact.glob("tokenizer_config.json"))
    jinja = artifact / "chat_template.jinja"
    if jinja.exists():
        jinja.write_text(TEMPLATES["no_system_role"])
    else:
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["chat_template"] = TEMPLATES["no_system_role"]
        config_path.write_text(json.dumps(tokenizer_config))
    evaluation = _evaluation_model(EvaluateConfig(model={"name_or_path": str(artifact)}, tasks=["STS12"]))
    assert evaluation.prompt == PromptConfig(**recorded)
    from transformers import AutoTokenizer

    formatter = PromptFormatter(AutoTokenizer.from_pretrained(artifact), evaluation.prompt)
    assert (formatter.prefix, formatter.suffix) == (recorded["prefix"], recorded["suffix"])
    rendered_again = PromptFormatter(AutoTokenizer.from_pretrained(artifact), PromptConfig())
    assert rendered_again.prefix != recorded["prefix"]  # so the recorded one is what was used


def test_the_rendered_wrapper_is_part_of_the_run_fingerprint(tiny_model_dirs):
    from pipelines.layer_loss import LayerLossConfig, _fingerprint
    from tasks.model.models import resolve_model

    config, source = LayerLossConfig(), resolve_model(tiny_model_dirs["llama"])
    one = _fingerprint(config, source, "data.jsonl", ("<a>", "</a>"))
    assert one == _fingerprint(config, source, "data.jsonl", ("<a>", "</a>"))
    assert one != _fingerprint(config, source, "data.jsonl", ("<b>", "</a>"))
