"""The classification objective's parts on CPU: verbalizer scoring, loss, metrics, data, bad
input, and the GPT-2 / OPT families (prune, save, reload, one training step)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import SHARED_DATA
from tasks.classification.verbalizer import ClassificationPrompt, VerbalizerScorer, classification_loss
from tasks.errors import LayercutError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smollm2_cut(smollm2_dir):
    """SmolLM2 cut to 2 layers with its (tied) LM head: real weights, fast on CPU."""
    from tasks.model.models import ModelSource, ModelSpec

    return ModelSpec(ModelSource(smollm2_dir, True), layers=2, dtype="float32", device="cpu",
                     lm_head=True).load()


def _direct_class_log_probs(model, scorer: VerbalizerScorer, texts: list[str]) -> torch.Tensor:
    """The reference: every (text, word) pair run alone, unpadded, through the plain model; the
    word's log-probability summed token by token from the logits; classes by log-sum-exp."""
    out = torch.zeros(len(texts), scorer.num_classes, dtype=torch.float64)
    with torch.no_grad():
        for i, text in enumerate(texts):
            prompt = scorer.prompt_ids(text)
            per_word = []
            for word in scorer.words:
                logits = model(input_ids=torch.tensor([prompt + list(word)])).logits[0].double()
                log_probs = torch.log_softmax(logits, dim=-1)
                per_word.append(sum(log_probs[len(prompt) - 1 + k, token] for k, token in enumerate(word)))
            per_word = torch.stack(per_word)
            for c in range(scorer.num_classes):
                mine = [j for j, cls in enumerate(scorer.word_class) if cls == c]
                out[i, c] = torch.logsumexp(per_word[mine], dim=0)
    return out


TEXTS = ["a great movie .", "bad , boring and far too long for what it is",
         "the plot is thin but the actors make it work , mostly , and the ending lands ."]


def test_single_token_verbalizers_equal_the_logits(smollm2_cut):
    model, tokenizer = smollm2_cut
    prompt = ClassificationPrompt.from_mapping("Review: {text}\nSentiment:", ["negative", "positive"],
                                               {"negative": ["negative"], "positive": ["positive"]})
    scorer = VerbalizerScorer(tokenizer, prompt)
    assert all(len(w) == 1 for w in scorer.words) and not scorer.multi
    with torch.no_grad():
        got = scorer.score(model, TEXTS, CPU).double()
    assert torch.allclose(got, _direct_class_log_probs(model, scorer, TEXTS), atol=2e-4)


def test_multi_token_and_multi_word_verbalizers_equal_the_logits(smollm2_cut):
    model, tokenizer = smollm2_cut
    prompt = ClassificationPrompt.from_mapping(
        "{text} All in all, it was", ["bad", "good", "odd"],
        {"bad": ["terrible", "a waste of time"], "good": ["supercalifragilistic"],
         "odd": ["strange", "weird"]})
    scorer = VerbalizerScorer(tokenizer, prompt)
    assert max(len(w) for w in scorer.words) > 2 and len(scorer.multi) >= 2  # really multi-token
    with torch.no_grad():
        got = scorer.score(model, TEXTS, CPU).double()
    assert torch.allclose(got, _direct_class_log_probs(model, scorer, TEXTS), atol=2e-4)


def test_long_texts_are_cut_but_the_template_is_kept(smollm2_cut):
    _, tokenizer = smollm2_cut
    prompt = ClassificationPrompt.from_mapping("Review: {text}\nSentiment:", ["n", "p"],
                                               {"n": ["negative"], "p": ["positive"]}, max_length=24)
    scorer = VerbalizerScorer(tokenizer, prompt)
    ids = scorer.prompt_ids("word " * 200)
    assert len(ids) <= 24
    assert ids[-len(scorer.after):] == scorer.after and ids[:len(scorer.before)] == scorer.before
    with pytest.raises(LayercutError, match="leaves no room"):
        VerbalizerScorer(tokenizer, ClassificationPrompt.from_mapping(
            "Review: {text}\nSentiment:", ["n", "p"], {"n": ["negative"], "p": ["positive"]},
            max_length=4))


def test_classification_losses_on_hand_made_scores():
    scores = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.6]]))  # probabilities of the label words
    labels = torch.tensor([0, 1])
    # classes: softmax over the classes' scores -> p(gold) = 0.5/0.75 and 0.6/0.7
    expected = -(torch.log(torch.tensor(0.5 / 0.75)) + torch.log(torch.tensor(0.6 / 0.7))) / 2
    assert classification_loss(scores, labels, "classes").item() == pytest.approx(expected.item(), rel=1e-6)
    # vocabulary: the gold words' probability under the whole next-token distribution
    expected = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.6))) / 2
    assert classification_loss(scores, labels, "vocabulary").item() == pytest.approx(expected.item(), rel=1e-6)


def test_metrics_by_hand():
    from tasks.classification.classification_eval import classification_metrics

    gold = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    metrics = classification_metrics(gold, predicted, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: a: p=1, r=2/3 -> 0.8; b: p=1/2, r=1/2 -> 0.5; c: p=1/2, r=1 -> 2/3
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["majority_rate"] == pytest.approx(3 / 6)
    assert metrics["predicted_counts"] == {"a": 2, "b": 2, "c": 2}


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("template, labels, words, message", [
    ("Review: {text} Sentiment:", ["neg", "pos"], {"neg": ["bad"]}, "have no verbalizer"),
    ("Review: Sentiment:", ["neg", "pos"], {"neg": ["bad"], "pos": ["good"]}, "slot exactly once"),
    ("{text} {text}", ["neg", "pos"], {"neg": ["bad"], "pos": ["good"]}, "slot exactly once"),
    ("{text}", ["neg", "pos"], {"neg": ["bad"], "pos": ["good"], "meh": ["so-so"]}, "not in the label list"),
    ("{text}", ["neg", "pos"], {"neg": ["bad"], "pos": ["bad"]}, "given for both"),
    ("{text}", ["neg", "pos"], {"neg": ["bad"], "pos": ["  "]}, "no verbalizer word"),
    ("{text}", ["only"], {"only": ["x"]}, "at least two labels"),
])
def test_bad_prompts_are_refused(template, labels, words, message):
    with pytest.raises(LayercutError, match=message):
        ClassificationPrompt.from_mapping(template, labels, words)


def _write_split(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")


def test_labels_outside_the_label_list_are_an_error(tmp_path, ray_cluster):
    from tasks.training.classification_data import annotated_labeled

    _write_split(tmp_path / "bad", [{"text": "fine", "label": 0}, {"text": "great", "label": 1},
                                    {"text": "what", "label": 3}])
    with pytest.raises(LayercutError, match="1 rows .* labels outside the label list 0..1.*'3'"):
        annotated_labeled(str(tmp_path / "bad" / "train.parquet"), label_names=["neg", "pos"],
                          columns={}, seed=0)
    with pytest.raises(LayercutError, match="no 'sentence' column"):
        annotated_labeled(str(tmp_path / "bad" / "train.parquet"), label_names=["neg", "pos"],
                          columns={"text": "sentence"}, seed=0)


def test_packaged_datasets_match_their_data(ray_cluster):
    """The presets' label lists are the mirror's own (label_text column), and every split reads."""
    from pipelines.resolve import label_names
    from pipelines.sections import ClassificationSection, classification_presets
    from tasks.training.classification_data import annotated_labeled, label_names_from_data

    for name in classification_presets():
        section = ClassificationSection(dataset=name, data_root=str(SHARED_DATA))
        names = label_names(section)
        for split in ("train", "test"):
            path, columns = section.split_path(split)
            assert label_names_from_data(path, columns) == names, (name, split)
        path, columns = section.split_path("test")
        _, report = annotated_labeled(path, label_names=names, columns=columns, seed=0)
        assert report["rows"] > 0 and report["skipped_rows"] == 0
        assert sum(report["per_class"].values()) == report["rows"]


def test_packaged_classification_configs_validate():
    from pipelines.classify import ClassifyConfig
    from pipelines.config import CONFIG_DIR, load_config
    from pipelines.finetune import FinetuneConfig

    for name in ("gpt2-xl", "opt-1.3b"):
        tuned = load_config(FinetuneConfig, CONFIG_DIR / "finetune" / f"{name}.yaml")
        assert tuned.objective == "classification" and tuned.classification.dataset == "sst2"
    for path in sorted((CONFIG_DIR / "classify").glob("*.yaml")):
        load_config(ClassifyConfig, path)


def _cli(capsys, *args):
    """The CLI in this process (what ``python -m pipelines.cli`` runs): (exit code, stderr)."""
    from pipelines.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["finetune", "--layers", "2", "objective=classification", "classification.template=no slot"],
     "slot exactly once"),
    (["finetune", "--layers", "2", "objective=classification", "classification.dataset=agnews"],
     "unknown dataset 'agnews'"),
    (["finetune", "--layers", "2", "objective=classification",
      "classification.verbalizers={negative: [bad]}"], "have no verbalizer"),
    (["evaluate-classifier", "classification.template=About {text} it is", "classification.verbalizers={x: [y]}"],
     "not in the label list"),
])
def test_cli_bad_classification_config_is_one_line(args, message, capsys):
    code, stderr = _cli(capsys, *args)
    assert code == 2, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("layercut: error")]
    assert len(lines) == 1 and message in lines[0], stderr[-2000:]


# --- GPT-2 and OPT: prune, save, reload, one training step -------------------------------------

def _tiny_causal_lm(family: str, vocab_size: int):
    import transformers as tf

    if family == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=256)
    else:
        config = tf.OPTConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4,
                              num_attention_heads=4, ffn_dim=64, max_position_embeddings=256,
                              word_embed_proj_dim=32)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config)


EXPECTED_LORA = {"gpt2": {"c_attn", "c_proj", "c_fc"},
                 "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}}


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_gpt2_and_opt_prune_save_reload_and_train(family, tmp_path, base_tokenizer):
    from transformers import AutoModelForCausalLM

    from tasks.export.artifact import ArtifactInfo, export_artifact
    from tasks.model.lora import LoraSettings, add_lora, lora_targets_of
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.model.pruning import decoder_layers, prune_model
    from tasks.training.objectives import ClassificationObjective

    full = _tiny_causal_lm(family, len(base_tokenizer))
    full.save_pretrained(tmp_path / "base")
    base_tokenizer.save_pretrained(tmp_path / "base")
    spec = ModelSpec(ModelSource(str(tmp_path / "base"), True), layers=2, dtype="float32",
                     device="cpu", lm_head=True)
    model, tokenizer = spec.load()
    assert len(decoder_layers(model)) == 2 and model.config.num_hidden_layers == 2

    prompt = ClassificationPrompt.from_mapping("Review: {text}\nSentiment:", ["negative", "positive"],
                                               {"negative": ["negative", "bad"], "positive": ["positive"]})
    scorer = VerbalizerScorer(tokenizer, prompt)
    # Loaded already cut == the full model with its last layers deleted (an independent cut).
    truly_pruned = prune_model(_tiny_causal_lm(family, len(base_tokenizer)), 2).eval()
    with torch.no_grad():
        assert torch.allclose(scorer.score(model, TEXTS, CPU), scorer.score(truly_pruned, TEXTS, CPU),
                              atol=1e-5)

    # One LoRA training step: adapters on every attention/MLP projection, and they move.
    peft_model = add_lora(model, LoraSettings(dropout=0.0))
    targets = {name.rsplit(".", 1)[-1] for name in lora_targets_of(peft_model)}
    assert targets == EXPECTED_LORA[family]
    peft_model.train()
    trained = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    step_loss = ClassificationObjective(prompt).bind(tokenizer)
    loss, tokens, _ = step_loss(peft_model, {"text": TEXTS[:2], "label": [1, 0]}, CPU)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and tokens > 0
    assert any(not torch.equal(p, trained[n]) for n, p in peft_model.named_parameters() if n in trained)

    # Save the adapter, export the merged classifier, reload it with plain transformers.
    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = scorer.score(peft_model, TEXTS, CPU)
    info = ArtifactInfo(
        base_model=family, base_model_path=str(tmp_path / "base"), layers=2, total_layers=4,
        parameters=1, parameters_full=2, pooling=None, prompt=None, training={
            "learning_rate": 1e-2, "warmup_steps": 0, "batch_size": 2, "seed": 0},
        lora={"r": 16, "alpha": 32, "dropout": 0.0}, loss_scale=None, final_loss=float(loss.detach()),
        steps_done=1, workers=1, data="hand-made", objective="classification",
        classification={"template": prompt.template, "label_names": list(prompt.label_names),
                        "verbalizers": [list(w) for w in prompt.verbalizers], "loss": "classes"})
    target = export_artifact(spec, tmp_path / "adapter", tmp_path / "artifact", info)
    reloaded = AutoModelForCausalLM.from_pretrained(target).eval()
    assert len(decoder_layers(reloaded)) == 2
    with torch.no_grad():
        assert torch.allclose(scorer.score(reloaded, TEXTS, CPU), expected, atol=1e-5)


def test_full_fine_tuning_exports_the_trained_weights(tmp_path, base_tokenizer):
    """No LoRA: the model's own weights train and the export carries them."""
    from transformers import AutoModelForCausalLM

    from tasks.export.artifact import ArtifactInfo, export_artifact
    from tasks.model.models import ModelSource, ModelSpec

    _tiny_causal_lm("gpt2", len(base_tokenizer)).save_pretrained(tmp_path / "base")
    base_tokenizer.save_pretrained(tmp_path / "base")
    spec = ModelSpec(ModelSource(str(tmp_path / "base"), True), layers=3, dtype="float32",
                     device="cpu", lm_head=True)
    model, tokenizer = spec.load()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained"
    model.save_pretrained(tmp_path / "weights")
    info = ArtifactInfo(
        base_model="gpt2", base_model_path=str(tmp_path / "base"), layers=3, total_layers=4,
        parameters=1, parameters_full=2, pooling=None, prompt=None, training={
            "learning_rate": 1e-5, "warmup_steps": 0, "batch_size": 2, "seed": 0},
        lora=None, loss_scale=None, final_loss=None, steps_done=1, workers=1, data="x",
        objective="classification", classification={
            "template": "{text} is", "label_names": ["a", "b"], "verbalizers": [["x"], ["y"]],
            "loss": "classes"})
    target = export_artifact(spec, tmp_path / "weights", tmp_path / "artifact", info)
    reloaded = AutoModelForCausalLM.from_pretrained(target)
    for (name, expected), (_, got) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(expected, got), name
    assert "full fine-tuning" in (target / "README.md").read_text()


def test_a_classifier_counts_its_untied_lm_head(tmp_path, base_tokenizer):
    import transformers as tf

    from tasks.model.models import ModelSource, parameters_per_depth
    from tests.conftest import TINY

    config = tf.LlamaConfig(vocab_size=len(base_tokenizer), tie_word_embeddings=False, **TINY)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path)
    source = ModelSource(str(tmp_path), True)
    _, backbone = parameters_per_depth(source)
    _, causal_lm = parameters_per_depth(source, lm_head=True)
    head = len(base_tokenizer) * TINY["hidden_size"]
    assert [c - b for b, c in zip(backbone, causal_lm)] == [head] * len(backbone)


def _full_fine_tuning_worker(rank: int, port: int, base_dir: str, out: str) -> None:
    """One gloo process: a DeepSpeed step of full fine-tuning, its checkpoint, a resume from it,
    and the export of the checkpoint's weights."""
    import os

    import torch.distributed as dist

    from tasks.export.artifact import ArtifactInfo, export_artifact
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.training.deepspeed_config import OptimizationSettings
    from tasks.training.objectives import ClassificationObjective
    from tasks.training.train_loop import (TrainingJob, build_trainable, initialize_engine, load_checkpoint,
                                save_checkpoint)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    prompt = ClassificationPrompt.from_mapping("Review: {text}\nSentiment:", ["negative", "positive"],
                                               {"negative": ["negative"], "positive": ["positive"]})
    spec = ModelSpec(ModelSource(base_dir, True), layers=2, dtype="float32", device="cpu", lm_head=True)
    job = TrainingJob(
        spec=spec, objective=ClassificationObjective(prompt), lora=None,
        optimization=OptimizationSettings(per_device_batch=2, zero_stage=2, bf16=False,
                                          learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0),
        steps=2, warmup_steps=0, gradient_checkpointing=False, checkpoint_every=1, seed=3,
        fingerprint="full")
    model, tokenizer = build_trainable(job)
    engine = initialize_engine(model, job, 1)
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    loss, _, _ = job.objective.bind(tokenizer)(engine, {"text": TEXTS[:2], "label": [1, 0]}, CPU)
    engine.backward(loss)
    engine.step()
    trained = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    checkpoint = Path(out) / "checkpoint"
    checkpoint.mkdir()
    save_checkpoint(engine, job, 1, [{"step": 1}], 0, 1, checkpoint)
    fresh, _ = build_trainable(job)
    resumed = initialize_engine(fresh, job, 1)
    step, _ = load_checkpoint(resumed, checkpoint, job, 0, 1)
    restored = {n: p.detach().clone() for n, p in resumed.module.named_parameters()}
    info = ArtifactInfo(
        base_model="gpt2", base_model_path=base_dir, layers=2, total_layers=4, parameters=1,
        parameters_full=2, pooling=None, prompt=None,
        training={"learning_rate": 1e-3, "warmup_steps": 0, "batch_size": 2, "seed": 3},
        lora=None, loss_scale=None, final_loss=float(loss), steps_done=1, workers=1, data="x",
        objective="classification", classification={
            "template": prompt.template, "label_names": ["negative", "positive"],
            "verbalizers": [["negative"], ["positive"]], "loss": "classes"})
    export_artifact(spec, checkpoint / "weights", Path(out) / "artifact", info)
    torch.save({"before": before, "trained": trained, "restored": restored, "step": step},
               Path(out) / "result.pt")
    dist.destroy_process_group()


def test_full_fine_tuning_through_deepspeed_checkpoints_and_exports(tmp_path, base_tokenizer):
    """lora.enabled=false: every weight moves, the checkpoint holds them (resume restores them
    exactly) and the exported model is the trained one."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    from tests.conftest import free_port

    _tiny_causal_lm("gpt2", len(base_tokenizer)).save_pretrained(tmp_path / "base")
    base_tokenizer.save_pretrained(tmp_path / "base")
    mp.start_processes(_full_fine_tuning_worker, args=(free_port(), str(tmp_path / "base"), str(tmp_path)),
                       nprocs=1, join=True, start_method="spawn")
    result = torch.load(tmp_path / "result.pt")
    assert result["step"] == 1
    moved = [n for n in result["trained"] if not torch.equal(result["trained"][n], result["before"][n])]
    assert len(moved) == len(result["trained"])  # every weight trained, not only adapters
    for name, weight in result["trained"].items():
        assert torch.equal(result["restored"][name], weight), name
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "artifact").state_dict()
    for name, weight in result["trained"].items():
        assert torch.equal(exported[name], weight), name


def test_one_ray_worker_scores_what_the_local_run_scores(tmp_path, tiny_causal_lm, ray_cluster, capsys):
    """``evaluate-classifier`` on one Ray worker (a streaming task in a pooled worker) predicts
    what the in-process run does, chunk by chunk (the tiny random Llama cut to 2 layers,
    zero-shot). A pool of actors is test_classification_stage.py's (two workers)."""
    import csv

    from pipelines.cli import main

    args = ["evaluate-classifier", "--model", tiny_causal_lm, "--layers", "2", "--output-dir", str(tmp_path),
            "--data-root", str(SHARED_DATA), "--no-progress"]
    overrides = ["max_test_rows=24", "chunk_size=8", "workers.cpus_per_worker=1"]
    predictions = {}
    for name, workers in {"local": "workers.executor=local", "one": "workers.num_workers=1"}.items():
        assert main([*args, "--name", name, *overrides, workers]) == 0, capsys.readouterr().err[-3000:]
        with open(tmp_path / name / "predictions.csv") as handle:
            predictions[name] = list(csv.DictReader(handle))
        assert len(list((tmp_path / name / "chunks").glob("*/*.npz"))) == 3
    assert len(predictions["local"]) == 24 and predictions["one"] == predictions["local"]
