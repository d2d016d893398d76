"""Bad data rows (the mixed-types case): a value that is not text, a line that is not JSON.

Every reader of rows (stage 1's sample, stage 2's batch plan, the classification splits) skips
and counts such a row, or with ``invalid_rows: fail`` stops with one line naming file, line and
field; the other rows of the file are read as they are.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from conftest import SHARED_CASES
from pipelines.cli import main
from tasks.errors import LayercutError
from tasks.training.batch_plan import place_rows, plan_global_batches, worker_slots
from tasks.training.data import annotate, annotated_triplets, column_mapping, sample_triplet_batches
from tasks.training.json_lines import parse_lines

MIXED = SHARED_CASES / "mixed-types" / "train" / "triplets.jsonl"


def _case_rows() -> list[dict]:
    return [json.loads(line) for line in MIXED.read_text().splitlines() if line.strip()]


def test_json_lines_keep_every_line_and_flag_values_that_are_not_text():
    lines = [b'{"a": "x", "b": 1945}', b"", b'{"a": true, "c": [1, "y"]}', b"not json",
             b'"just a string"', b'{"a": null, "b": {"k": "v"}}', b'{"a": "caf\xe9"}']
    table = pa.concat_tables(parse_lines(iter(lines)))
    assert table.to_pydict() == {
        "a": ["x", "true", None, None, None, None],
        "b": ["1945", None, None, None, '{"k": "v"}', None],
        "c": [None, '[1, "y"]', None, None, None, None],
        "_not_text": ['{"b": "number"}', '{"a": "boolean", "c": "array"}', "", "", '{"b": "object"}', ""],
        "_unparsable": ["", "", table["_unparsable"][2].as_py(), "a JSON string, not an object", "",
                        "not UTF-8 (invalid continuation byte at byte 10)"],
        "_line": [1, 3, 4, 5, 6, 7],
    }
    assert table["_unparsable"][2].as_py().startswith("not valid JSON (Expecting value")
    # A file holding one JSON array: items numbered from 1.
    array = pa.concat_tables(parse_lines(iter([b'[{"a": "x"},', b' {"a": 2}]'])))
    assert array.to_pydict() == {"a": ["x", "2"], "_not_text": ["", '{"a": "number"}'],
                                 "_unparsable": ["", ""], "_line": [1, 2]}


def test_mixed_types_case_is_skipped_and_counted_or_named(ray_cluster):
    rows = _case_rows()
    batches, report = sample_triplet_batches(str(MIXED), num_batches=1, batch_size=2, seed=0)
    first = f"{MIXED} line 2: 'positive' is a number (1945), not text"
    assert report["rows"] == 3 and report["skipped_rows"] == 1 and report["first_problem"] == first
    good = [rows[0], rows[2]]  # the two rows with text everywhere, read exactly as written
    assert sorted(zip(batches[0]["query"], batches[0]["positive"], batches[0]["negative"],
                      batches[0]["instruction"])) == sorted(
        (r["query"], r["positive"], r["negative"], r["instruction"]) for r in good)
    with pytest.raises(LayercutError) as error:
        sample_triplet_batches(str(MIXED), num_batches=1, batch_size=2, seed=0, invalid_rows="fail")
    assert str(error.value) == f"1 of 3 rows in {MIXED} are unusable; first: {first}"


def test_stage2_plans_only_the_text_rows(ray_cluster):
    """Stage 2 reads through the same annotation: the bad row never reaches a batch."""
    annotated, report = annotated_triplets(str(MIXED), seed=0)
    assert report["skipped_rows"] == 1
    table = pa.concat_tables(list(annotated.iter_batches(batch_format="pyarrow")))
    valid = table.filter(pa.compute.equal(table["_problem"], ""))
    plan = plan_global_batches(valid["_key"].to_numpy(), valid["source"].to_pylist(), steps=1,
                               global_batch=2, seed=0)
    placed = place_rows(table, worker_slots(plan, 0, 2))
    assert sorted(placed["positive"].to_pylist()) == sorted(
        r["positive"] for r in _case_rows() if isinstance(r["positive"], str))


def test_parquet_numbers_and_optional_fields(tmp_path):
    """Annotation alone (no Ray): a Parquet column of numbers is named by file and field; an
    instruction may be absent or blank but not a number; a source may be any value (a label)."""
    parquet = pa.Table.from_pylist([{"query": "q", "positive": 0, "negative": "n",
                                     "path": "/d/ints.parquet"}])
    annotated = annotate(parquet, {"query": "query", "positive": "positive",
                                   "negative": "negative"}, seed=0)
    assert annotated["_problem"].to_pylist() == ["/d/ints.parquet: 'positive' is a number (0), not text"]
    lines = [json.dumps({"query": f"q{i}", "positive": f"p{i}", "negative": f"n{i}", "source": 7,
                         **({"instruction": ""} if i % 2 else {})}).encode() for i in range(2)]
    lines.append(b'{"query": "q", "positive": "p", "negative": "n", "instruction": 3}')
    table = pa.concat_tables(parse_lines(iter(lines)))
    mapping = {f: f for f in ("query", "positive", "negative", "instruction", "source")}
    annotated = annotate(table, mapping, seed=0)
    assert annotated["_problem"].to_pylist() == ["", "", "line 3: 'instruction' is a number (3), not text"]
    assert annotated["instruction"].to_pylist() == [None, "", None]
    assert annotated["source"].to_pylist() == ["7", "7", None]


def test_classification_rows_are_skipped_or_named(tmp_path, ray_cluster):
    from tasks.training.classification_data import annotated_labeled, label_names_from_data, valid_rows

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine", "label": 0, "label_text": "neg"}\n'
                    '{"text": 1945, "label": 1, "label_text": "pos"}\n'
                    '{"text": "great", "label": 1, "label_text": "pos"}\n')
    assert label_names_from_data(str(path), {}) == ["neg", "pos"]
    annotated, report = annotated_labeled(str(path), label_names=["neg", "pos"], columns={}, seed=0)
    assert report["skipped_rows"] == 1 and report["per_class"] == {"neg": 1, "pos": 2}
    assert report["first_problem"] == f"{path} line 2: 'text' is a number (1945), not text"
    assert sorted((r["text"], r["label"]) for r in valid_rows(annotated)) == [("fine", 0), ("great", 1)]
    with pytest.raises(LayercutError,
                       match=rf"1 of 3 rows in .* no usable text; first: {path} line 2: 'text'"):
        annotated_labeled(str(path), label_names=["neg", "pos"], columns={}, seed=0, invalid_rows="fail")


def test_cli_reports_the_skip_or_one_line(tmp_path, capsys, tiny_model_dirs, ray_cluster):
    common = ["layer-loss", "--output-dir", str(tmp_path), "--no-progress"]
    overrides = [f"data.source={MIXED}",
              f"model.name_or_path={tiny_model_dirs['llama']}", "data.num_batches=1",
              "data.batch_size=2", "workers.executor=local", "encoder.max_length=32"]
    assert main([*common, "--name", "skip", *overrides]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 3 rows" in err and f"{MIXED} line 2: 'positive'" in err
    selection = json.loads((tmp_path / "skip" / "selection.json").read_text())
    assert selection["data"]["skipped_rows"] == 1 and selection["data"]["rows"] == 3
    assert main([*common, "--name", "fail", *overrides, "data.invalid_rows=fail"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"layercut: error: 1 of 3 rows in {MIXED} are unusable; first: {MIXED} line 2: "
                   "'positive' is a number (1945), not text"]


def test_an_optional_key_first_seen_in_a_later_block_is_read():
    """The column mapping comes from the first block's schema; JSON-lines blocks each have their
    own keys, so an instruction that appears only in later rows must still be read."""
    mapping = column_mapping(["query", "positive", "negative"], {})
    early = pa.concat_tables(parse_lines(iter([b'{"query": "q", "positive": "p", "negative": "n"}'])))
    later = pa.concat_tables(parse_lines(iter(
        [b'{"query": "q", "positive": "p", "negative": "n", "instruction": "Retrieve", "source": "s"}'])))
    assert annotate(early, mapping, seed=0)["instruction"].to_pylist() == [None]
    assert annotate(later, mapping, seed=0)["instruction"].to_pylist() == ["Retrieve"]
    assert annotate(later, mapping, seed=0)["source"].to_pylist() == ["s"]
