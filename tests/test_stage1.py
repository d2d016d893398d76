"""Stage 1 end to end: Ray Data sampling, K Ray tasks vs in-process, resume, CLI and bad input."""

from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SHARED_CASES, SHARED_DATA, TRIPLETS
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.layer_loss import LayerLossConfig, run
from tasks.errors import LayercutError
from tasks.training.data import resolve_source, sample_triplet_batches


def _config(tmp_path, model_dir, **workers) -> LayerLossConfig:
    return LayerLossConfig.model_validate({
        "output_dir": str(tmp_path), "name": "run",
        "model": {"name_or_path": model_dir},
        "data": {"source": str(TRIPLETS), "num_batches": 4, "batch_size": 4},
        "workers": {"cpus_per_worker": 1, **workers},
    })


def _losses(run_dir):
    return np.array([row["loss"] for row in json.loads((run_dir / "layer_losses.json").read_text())["layers"]])


def test_ray_tasks_equal_in_process(tmp_path, tiny_model_dirs, ray_cluster):
    model = tiny_model_dirs["qwen2"]
    local = run(_config(tmp_path / "local", model, executor="local"), show_progress=False)
    one = run(_config(tmp_path / "k1", model, num_workers=1), show_progress=False)
    two = run(_config(tmp_path / "k2", model, num_workers=2), show_progress=False)
    expected = _losses(tmp_path / "local" / "run")
    np.testing.assert_allclose(_losses(tmp_path / "k1" / "run"), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_losses(tmp_path / "k2" / "run"), expected, rtol=1e-6, atol=1e-7)
    assert local.small.layers == one.small.layers == two.small.layers
    assert local.large.layers == one.large.layers == two.large.layers


def test_sampling_is_reproducible_and_layout_independent(tmp_path, triplet_rows, ray_cluster):
    kwargs = dict(num_batches=3, batch_size=5, seed=7)
    first, report = sample_triplet_batches(str(TRIPLETS), **kwargs)
    again, _ = sample_triplet_batches(str(TRIPLETS), **kwargs)
    assert first == again
    assert report["rows"] == len(triplet_rows) and report["skipped_rows"] == 0
    # The same rows, shuffled and split over two Parquet files, sample identically.
    rows = triplet_rows[:]
    random.Random(3).shuffle(rows)
    folder = tmp_path / "parquet"
    folder.mkdir()
    for part, chunk in enumerate((rows[:200], rows[200:])):
        pq.write_table(pa.Table.from_pylist(chunk), folder / f"part-{part}.parquet")
    assert sample_triplet_batches(str(folder), **kwargs)[0] == first
    assert sample_triplet_batches(f"file://{folder}", **kwargs)[0] == first
    other_seed, _ = sample_triplet_batches(str(TRIPLETS), num_batches=3, batch_size=5, seed=8)
    assert other_seed != first
    sampled = {q for batch in first for q in batch["query"]}
    assert len(first) == 3 and all(len(b["query"]) == 5 for b in first)
    assert sampled <= {r["query"] for r in triplet_rows}
    # Exactly the 15 rows with the smallest keys, in key order (the annotation run here in
    # this process, on the whole file at once, without Ray).
    from tasks.training.data import annotate, column_mapping
    from tasks.training.json_lines import parse_lines

    table = pa.concat_tables(parse_lines(iter(TRIPLETS.read_bytes().splitlines())))
    keyed = annotate(table, column_mapping(table.column_names, {}), seed=7).to_pylist()
    smallest = sorted((r for r in keyed if not r["_problem"]), key=lambda row: row["_key"])[:15]
    assert [(r["query"], r["positive"], r["negative"]) for r in smallest] == [
        t for b in first for t in zip(b["query"], b["positive"], b["negative"])]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_invalid_rows_skip_or_fail(tmp_path, triplet_rows, ray_cluster):
    rows = [dict(r) for r in triplet_rows[:30]]
    rows[3]["negative"] = ""
    del rows[11]["positive"]
    rows[20]["query"] = None
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    batches, report = sample_triplet_batches(path, num_batches=2, batch_size=10, seed=1)
    assert report["skipped_rows"] == 3 and report["rows"] == 30
    valid = {(r["query"], r["positive"], r["negative"]) for k, r in enumerate(rows) if k not in (3, 11, 20)}
    used = [t for b in batches for t in zip(b["query"], b["positive"], b["negative"])]
    assert len(used) == 20 and set(used) <= valid
    with pytest.raises(LayercutError, match="3 of 30 rows"):
        sample_triplet_batches(path, num_batches=2, batch_size=10, seed=1, invalid_rows="fail")
    with pytest.raises(LayercutError, match="27 usable rows"):
        sample_triplet_batches(path, num_batches=3, batch_size=10, seed=1)


def test_column_aliases_and_missing_columns(tmp_path, triplet_rows, ray_cluster):
    renamed = [{"anchor": r["query"], "positive": r["positive"], "negative": r["negative"]}
               for r in triplet_rows[:10]]
    batches, report = sample_triplet_batches(_write_jsonl(tmp_path / "nli.jsonl", renamed),
                                             num_batches=1, batch_size=4, seed=0)
    assert report["columns"]["query"] == "anchor" and batches[0]["instruction"] == [None] * 4
    no_negative = [{"query": r["query"], "positive": r["positive"]} for r in triplet_rows[:10]]
    with pytest.raises(LayercutError, match="no 'negative' column"):
        sample_triplet_batches(_write_jsonl(tmp_path / "pairs.jsonl", no_negative),
                               num_batches=1, batch_size=4, seed=0)


def test_data_root_switches_to_the_local_mirror(tmp_path, monkeypatch):
    hub = "hf://datasets/sentence-transformers/all-nli/triplet/train-00000-of-00001.parquet"
    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    assert resolve_source(hub, "train/triplets.jsonl", None) == hub
    assert resolve_source(hub, "train/triplets.jsonl", str(SHARED_DATA)) == str(TRIPLETS)
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(SHARED_DATA))
    assert resolve_source(hub, "train/triplets.jsonl", None) == str(TRIPLETS)
    with pytest.raises(LayercutError, match="not a directory"):
        resolve_source(hub, "train/triplets.jsonl", str(tmp_path / "nowhere"))


def test_duplicates_are_masked_and_counted(tmp_path, tiny_model_dirs, ray_cluster):
    """The duplicates case (one query twice, one positive twice): selection.json counts the 4
    false-negative pairs; masking them (the local default) lowers the loss at every depth."""
    results = {}
    for masked in (True, False):
        config = LayerLossConfig.model_validate({
            "output_dir": str(tmp_path / str(masked)), "name": "run",
            "model": {"name_or_path": tiny_model_dirs["llama"]},
            "data": {"source": str(SHARED_CASES / "duplicates" / "train" / "triplets.jsonl"),
                     "num_batches": 1, "batch_size": 4},
            "loss": {"mask_duplicate_positives": masked}, "workers": {"executor": "local"}})
        summary = run(config, show_progress=False)
        assert summary.duplicates == {"masked": masked, "pairs": 4, "batches_with_duplicates": 1}
        saved = json.loads((tmp_path / str(masked) / "run" / "selection.json").read_text())
        assert saved["duplicates"] == summary.duplicates
        results[masked] = _losses(tmp_path / str(masked) / "run")
    assert np.all(results[True] <= results[False]) and np.any(results[True] < results[False])
    assert LayerLossConfig().loss.mask_duplicate_positives


def test_resume_reuses_finished_batches(tmp_path, tiny_model_dirs, ray_cluster):
    config = _config(tmp_path, tiny_model_dirs["llama"], num_workers=1)
    run(config, show_progress=False)
    run_dir = tmp_path / "run"
    full = _losses(run_dir)
    batches = run_dir / "batches"
    # Batch 0 is replaced by a marker value, batch 2 deleted: a rerun must keep the marker
    # (reused, not recomputed) and recompute batch 2 only.
    marker = json.loads((batches / "batch-00000.json").read_text())
    original0 = np.array(marker["losses"])
    marker["losses"] = [7.0] * len(marker["losses"])
    (batches / "batch-00000.json").write_text(json.dumps(marker))
    (batches / "batch-00002.json").unlink()
    run(config, show_progress=False)
    assert (batches / "batch-00002.json").exists()
    np.testing.assert_allclose(_losses(run_dir), full + (7.0 - original0) / 4, rtol=1e-9)
    changed = config.model_copy(update={"loss": config.loss.model_copy(update={"scale": 20.0})})
    with pytest.raises(LayercutError, match="different configuration"):
        run(changed, show_progress=False)


def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_cli_bad_input(tmp_path, capsys, tiny_model_dirs, ray_cluster, monkeypatch):
    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    common = ["layer-loss", "--output-dir", str(tmp_path), "--no-progress"]
    tiny = f"model.name_or_path={tiny_model_dirs['llama']}"
    cases = {
        "unknown key": ([*common, "data.batchsize=3"], "data.batchsize: unknown key"),
        "unknown model": ([*common, "model.name_or_path=not-a-model"], "unknown model 'not-a-model'"),
        "missing data": ([*common, tiny, f"data.source={tmp_path}/none.jsonl"], "training data not found"),
        "too few rows": ([*common, tiny, f"data.source={TRIPLETS}", "data.num_batches=100"],
                         "fewer than num_batches x batch_size"),
        "bad config file": (["layer-loss", "--config", str(tmp_path / "missing.yaml")], "not found"),
        "bad value": ([*common, "encoder.pooling=max"], "encoder.pooling"),
        "bad scale": ([*common, "loss.scale=0"], "loss.scale"),
    }
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    cases["unreadable model file"] = ([*common, f"model.name_or_path={broken}"], "cannot read GGUF model")
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text('{"query": "a", "positive": "b"\nnot json\n')
    cases["unreadable data"] = ([*common, tiny, f"data.source={garbled}"],
                                f"has no usable rows; first problem: {garbled} line 1: not valid JSON")
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    cases["model dir without config"] = ([*common, f"model.name_or_path={empty_dir}"], "has no config.json")
    for name, (argv, message) in cases.items():
        code, line = _cli(capsys, *argv)
        assert code == 2, name
        assert line.startswith("layercut: error:") and message in line, (name, line)


def test_trust_remote_code_stays_off(tmp_path, capsys, ray_cluster):
    remote = tmp_path / "remote-model"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps(
        {"model_type": "layercut_custom", "auto_map": {"AutoConfig": "configuration.CustomConfig",
                                                      "AutoModel": "modeling.CustomModel"}}))
    (remote / "configuration.py").write_text("raise SystemExit('remote code ran')\n")
    config = load_config(LayerLossConfig, None, [f"model.name_or_path={remote}"])
    assert config.model.trust_remote_code is False
    code, line = _cli(capsys, "layer-loss", "--output-dir", str(tmp_path), f"model.name_or_path={remote}")
    assert code == 2 and "trust_remote_code" in line


@pytest.mark.slow
def test_cli_on_smollm2_writes_the_outputs(tmp_path):
    """The real console script, in its own process, on the built-in model and the shared data."""
    out = tmp_path / "runs"
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "layercut") if (REPO / ".venv" / "bin" / "layercut").exists()
         else "layercut", "layer-loss", "--data-root", str(SHARED_DATA), "--output-dir", str(out),
         "data.num_batches=2", "data.batch_size=4"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = out / "layer-loss-smollm2-135m"
    layers = json.loads((run_dir / "layer_losses.json").read_text())["layers"]
    assert [row["layers"] for row in layers] == list(range(1, 31))
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in layers)
    csv_lines = (run_dir / "layer_losses.csv").read_text().splitlines()
    assert csv_lines[0] == "layers,loss,parameters,parameters_removed_pct" and len(csv_lines) == 31
    selection = json.loads((run_dir / "selection.json").read_text())
    losses = [row["loss"] for row in layers]
    assert selection["small"]["layers"] == 1 + int(np.argmin(losses[:15]))
    assert selection["large"]["layers"] == 16 + int(np.argmin(losses[15:]))
    assert selection["parameters_full"] == layers[-1]["parameters"] == 134_515_008
    assert 0 < selection["large"]["parameters_removed_pct"] < selection["small"]["parameters_removed_pct"]
    assert (run_dir / "layer_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "L3Prune picks for smollm2-135m" in result.stdout
    assert len(list((run_dir / "batches").glob("batch-*.json"))) == 2
