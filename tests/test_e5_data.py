"""The E5 layout (data.layout: e5) and the training/evaluation instruction check.

A small folder in the echo-embeddings layout is written here (a few sources, a few rows each).
The expected instructions are written out below from the official table (McGill-NLP/llm2vec
``E5_EMBEDDING_PROMPTS``, the rule ``instruction[i % 2]`` on the 0-based row index), not
read from tasks/training/e5_data.py; batches are checked source by source; bad rows are skipped and
counted as tasks/training/json_lines does for any JSON-lines data.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import SHARED_DATA
from pipelines.config import load_config
from pipelines.routes.contrastive.plan import check_instructions
from pipelines.sweep import SweepConfig, resolve_models
from tasks.errors import LayercutError
from tasks.model.prompts import PromptConfig, PromptFormatter
from tasks.training.batch_plan import plan_global_batches
from tasks.training.data import annotated_triplets, check_e5_folder

NLI = ("Given a premise, retrieve a hypothesis that is entailed by the premise",
       "Retrieve semantically similar text")
QUORA = ("Given a question, retrieve questions that are semantically equivalent to the given question",
         "Find questions that have the same meaning as the input question")
FEVER = "Given a claim, retrieve documents that support or refute the claim"
NQ = "Given a question, retrieve Wikipedia passages that answer the question"


def _rows(source: str, count: int) -> list[dict]:
    return [{"query": f"{source} query {i}", "positive": f"{source} positive {i}",
             "negative": f"{source} negative {i}"} for i in range(count)]


@pytest.fixture
def e5_folder(tmp_path):
    """allnli (6 rows), quora_duplicates (5), fever (4; line 2 has a number for its positive),
    nq (4; line 3 is not JSON)."""
    folder = tmp_path / "echo-data"
    folder.mkdir()
    lines = {"allnli": [json.dumps(r) for r in _rows("allnli", 6)],
             "quora_duplicates": [json.dumps(r) for r in _rows("quora_duplicates", 5)],
             "fever": [json.dumps(r) for r in _rows("fever", 4)],
             "nq": [json.dumps(r) for r in _rows("nq", 4)]}
    lines["fever"][1] = json.dumps({"query": "fever query 1", "positive": 1945, "negative": "x"})
    lines["nq"][2] = "{not json"
    for source, rows in lines.items():
        (folder / f"{source}.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "README.md").write_text("not data")  # other files are not read
    return folder


def _expected() -> dict[str, str]:
    """query -> instruction, by the official rule, for the usable rows."""
    expected = {f"allnli query {i}": NLI[i % 2] for i in range(6)}
    expected |= {f"quora_duplicates query {i}": QUORA[i % 2] for i in range(5)}
    expected |= {f"fever query {i}": FEVER for i in (0, 2, 3)}  # line 2 skipped
    expected |= {f"nq query {i}": NQ for i in (0, 1, 3)}  # line 3 skipped
    return expected


def _table(annotated) -> pa.Table:
    table = pa.concat_tables(list(annotated.iter_batches(batch_format="pyarrow")))
    return table.filter(pc.equal(table["_problem"], ""))


def test_instructions_per_source_alternation_and_bad_rows(e5_folder, ray_cluster):
    annotated, report = annotated_triplets(str(e5_folder), seed=0, layout="e5")
    assert report["rows"] == 19 and report["skipped_rows"] == 2
    assert report["first_problem"] == f"{e5_folder / 'fever.jsonl'} line 2: 'positive' is a number " \
        "(1945), not text" or report["first_problem"].startswith(f"{e5_folder / 'nq.jsonl'} line 3: not valid JSON")
    table = _table(annotated)
    got = dict(zip(table["query"].to_pylist(), table["instruction"].to_pylist()))
    assert got == _expected()
    # Each row's source is its file's; positives and negatives are read as written.
    for query, source, positive in zip(table["query"].to_pylist(), table["source"].to_pylist(),
                                       table["positive"].to_pylist()):
        assert query.startswith(source + " query ") and positive == query.replace("query", "positive")
    with pytest.raises(LayercutError) as error:
        annotated_triplets(str(e5_folder), seed=0, layout="e5", invalid_rows="fail")
    assert str(error.value).startswith(f"2 of 19 rows in {e5_folder} are unusable; first: ")


def test_batches_hold_one_source_each(e5_folder, ray_cluster):
    annotated, _ = annotated_triplets(str(e5_folder), seed=0, layout="e5")
    table = _table(annotated)
    keys = np.asarray(table["_key"].to_numpy(zero_copy_only=False))
    source_of = dict(zip(keys.tolist(), table["source"].to_pylist()))
    plan = plan_global_batches(keys, table["source"].to_pylist(), steps=12, global_batch=2, seed=3)
    sources = [{source_of[int(k)] for k in step} for step in plan]
    assert all(len(s) == 1 for s in sources)
    # One epoch: allnli 3 batches, quora 2, fever 1, nq 1 (remainders wait), in shuffled order.
    first_epoch = [next(iter(s)) for s in sources[:7]]
    assert sorted(first_epoch) == sorted(["allnli"] * 3 + ["quora_duplicates"] * 2 + ["fever", "nq"])


def test_query_input_is_instruction_separator_text(base_tokenizer):
    """Training renders an E5 query exactly as evaluation renders a task's query: the same
    formatter, ``<instruction>; <text>`` inside the chat wrapper (the official f"{instruction}; ")."""
    formatter = PromptFormatter(base_tokenizer, PromptConfig())
    full, start, end = formatter.render("allnli query 1", NLI[1])
    assert full == f"{formatter.prefix}{NLI[1]}; allnli query 1{formatter.suffix}"
    assert full[start:end] == "allnli query 1"


def test_layout_errors_are_one_line(tmp_path, e5_folder):
    (e5_folder / "mystery.jsonl").write_text('{"query": "q", "positive": "p", "negative": "n"}\n')
    with pytest.raises(LayercutError, match=r"echo-data: mystery.jsonl not sources of the E5 layout "
                                            r"\(data.layout e5; sources: allnli, dureader"):
        check_e5_folder(str(e5_folder))
    with pytest.raises(LayercutError, match="data.layout e5 needs a folder of <source>.jsonl files; .* is a file"):
        check_e5_folder(str(e5_folder / "nq.jsonl"))
    with pytest.raises(LayercutError, match="holds no <source>.jsonl files"):
        check_e5_folder(str(tmp_path))


def _plan(tmp_path, data: dict, finetune_data: dict | None = None, evaluate: dict | None = None):
    """The local default's resolved stage configs with these data settings (finetune: as stage 1
    unless given)."""
    tree = {"output_dir": str(tmp_path), "data_root": str(SHARED_DATA),
            "models": [{"config": "smollm2-135m"}],
            "overrides": {"layer_loss": {"data": data},
                          "finetune": {"data": data if finetune_data is None else finetune_data},
                          "evaluate": evaluate or {}}}
    (plan,) = resolve_models(load_config(SweepConfig, None, [], tree))
    return plan


def test_training_without_instructions_is_refused_unless_acknowledged(tmp_path, e5_folder, ray_cluster):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "nli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("nli", 4)))
    with pytest.raises(LayercutError) as error:
        check_instructions(_plan(tmp_path, {"local_source": str(plain)}))
    assert str(error.value) == (
        f"model smollm2-135m: the layer_loss training data {plain} has no instructions, but "
        "evaluation prepends task instructions to the queries of STSBenchmark, SICK-R; train on "
        "instructed data (data.layout: e5, or an instruction column) or set layer_loss "
        "data.allow_instruction_mismatch: true to acknowledge the mismatch")
    # Acknowledged in one stage: the other is still checked.
    acknowledged = {"local_source": str(plain), "allow_instruction_mismatch": True}
    with pytest.raises(LayercutError, match="the finetune training data .* set finetune "
                                            "data.allow_instruction_mismatch: true"):
        check_instructions(_plan(tmp_path, acknowledged, {"local_source": str(plain)}))
    check_instructions(_plan(tmp_path, acknowledged))
    # Instructed data passes: the E5 layout, and the local mirror's rows with their own.
    check_instructions(_plan(tmp_path, {"local_source": str(e5_folder), "layout": "e5"}))
    check_instructions(_plan(tmp_path, {}))
    # Evaluation without instructions: nothing to match.
    blank = {"instructions": {"STSBenchmark": "", "SICK-R": ""}}
    check_instructions(_plan(tmp_path, {"local_source": str(plain)}, evaluate=blank))


def test_paper_configs_train_and_scan_on_the_e5_layout():
    from pipelines.config import CONFIG_DIR
    from pipelines.finetune import FinetuneConfig
    from pipelines.layer_loss import LayerLossConfig

    for stage, cls in (("finetune", FinetuneConfig), ("layer_loss", LayerLossConfig)):
        for path in sorted((CONFIG_DIR / stage).glob("*.yaml")):
            data = load_config(cls, path).data
            paper = path.stem in ("llama3-8b", "mistral-7b", "qwen2-7b", "phi3-mini")
            assert (data.layout, data.local_source) == (("e5", "echo-data") if paper else
                                                        ("triplets", "train/triplets.jsonl")), path
            assert not data.allow_instruction_mismatch, path
