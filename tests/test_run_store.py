"""The run store (pipelines/run_store/): the fingerprint guard's refusal, finished results,
unit stores and atomic writes, checked against independent computations."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from pipelines.fingerprints import flatten
from pipelines.run_store.files import RunFiles
from pipelines.run_store.guard import Record, Refusal, check
from pipelines.run_store.items import NPZ
from pipelines.run_store.run import RunStore
from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError

REFUSAL = Refusal("results", "of a different configuration", "choose another --name or delete it")


def _sha16(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def test_other_settings_are_refused_in_one_line_naming_what_differs(tmp_path):
    store = RunStore(tmp_path / "run").create()
    before = {"model": ["m", None], "loss": {"scale": 50.0}, "seed": 1}
    now = {"model": ["m", None], "loss": {"scale": 20.0}, "seed": 1}
    assert store.guard().record(before) == _sha16(before)
    with pytest.raises(LayercutError) as refused:
        store.guard().check(now, has_results=True, refusal=REFUSAL)
    message = str(refused.value)
    assert message == (f"run directory {tmp_path / 'run'} holds results of a different configuration "
                       f"(fingerprint {_sha16(before)}, here {_sha16(now)}: "
                       'loss: {"scale": 50.0} -> {"scale": 20.0}); choose another --name or delete it')
    # The same settings pass; so does anything where no result exists yet, or with --force.
    store.guard().check(dict(before), has_results=True, refusal=REFUSAL)
    store.guard().check(now, has_results=False, refusal=REFUSAL)
    store.guard().check(now, has_results=True, refusal=REFUSAL, force=True)


def test_results_without_a_record_and_old_records_without_settings(tmp_path):
    store = RunStore(tmp_path).create()
    with pytest.raises(LayercutError, match=r"holds results without a fingerprint of what computed them; choose"):
        store.guard().check({"a": 1}, has_results=True, refusal=REFUSAL)
    store.files.write_json("fingerprint.json", {"fingerprint": "0123456789abcdef"})  # an older record
    with pytest.raises(LayercutError) as refused:
        store.guard().check({"a": 1}, has_results=True, refusal=REFUSAL)
    assert f"(fingerprint 0123456789abcdef, here {_sha16({'a': 1})});" in str(refused.value)
    # A fingerprint that is not the digest of the described settings (the sweep's) is compared as given.
    check(tmp_path, Record("f" * 16, {"a": 1}), {"a": 2}, fingerprint="f" * 16, has_results=True, refusal=REFUSAL)


def test_flattened_settings_name_the_innermost_key():
    assert flatten({"finetune": {"training": {"steps": 8, "seed": 1}}, "probe": [1, 2], "none": {}}) == {
        "finetune.training.steps": 8, "finetune.training.seed": 1, "probe": [1, 2], "none": {}}


def test_a_finished_result_is_returned_only_for_its_fingerprint_and_files(tmp_path, capsys):
    store = RunStore(tmp_path / "run").create()
    assert store.finished("summary.json", "abc") is None
    summary = {"mean": 0.5, "fingerprint": "abc"}
    store.save_result("summary.json", summary)
    assert store.finished("summary.json", "abc") == summary
    assert "is finished; nothing to do" in capsys.readouterr().err
    assert store.finished("summary.json", "other") is None
    assert store.finished("summary.json", "abc", requires=("model/layercut.json",)) is None
    store.files.write_json("model/layercut.json", {})
    assert store.finished("summary.json", "abc", requires=("model/layercut.json",)) == summary
    assert store.finished("summary.json", announce=False) == summary  # no fingerprint asked for
    assert capsys.readouterr().err.count("nothing to do") == 1


def test_unit_stores_round_trip_and_list_what_is_done(tmp_path):
    store = RunStore(tmp_path)
    batches = store.items("batches", "batch-{key:05d}.json")
    batches.save(3, {"batch": 3, "losses": [1.5, 2.0]})
    batches.save(1, {"batch": 1, "losses": [0.5]})
    assert (tmp_path / "batches" / "batch-00003.json").is_file()
    assert batches.done(range(5)) == [1, 3] and batches.any("batch-*.json")
    assert batches.load(3) == json.loads((tmp_path / "batches" / "batch-00003.json").read_text())
    chunks = store.items("chunks/abc", "{key:05d}.npz", NPZ)
    scores = np.arange(6, dtype=np.float32).reshape(3, 2)
    chunks.save(0, {"scores": scores, "seconds": np.float64(1.25)})
    with np.load(tmp_path / "chunks" / "abc" / "00000.npz") as direct:  # numpy's own reader
        np.testing.assert_array_equal(direct["scores"], scores)
    loaded = chunks.load(0)
    np.testing.assert_array_equal(loaded["scores"], scores)
    assert float(loaded["seconds"]) == 1.25 and not chunks.has(1)


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    files = RunFiles(tmp_path)
    files.write_json("summary.json", {"version": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with files.staged_file("summary.json") as staging:
            staging.write_text('{"version": 2, "scores": [0.1')  # half of it
            raise RuntimeError("killed")
    real_fsync = os.fsync

    def dies(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(OSError, match="disk gone"):
        files.write_json("summary.json", {"version": 3})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no staging left behind
    files.write_csv("log.csv", ["step", "loss"], [[1, 0.5], [2, 0.25]])
    assert (tmp_path / "log.csv").read_text() == "step,loss\n1,0.5\n2,0.25\n"


def test_a_staged_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with staged_directory(target) as staging:
        (staging / "config.json").write_text("1")
        (staging / "old-only.txt").write_text("x")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "config.json").write_text("2")
            raise RuntimeError("export failed")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "old-only.txt"]
    assert (target / "config.json").read_text() == "1"
    with staged_directory(target) as staging:
        (staging / "config.json").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # replaced, not merged
    assert (target / "config.json").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_stored_result_round_trips_and_one_of_another_version_is_one_line():
    """A finished run's summary.json rebuilds its typed result exactly; one written by another
    layercut version (a key missing or unknown) is refused naming the file and the keys, not a
    TypeError from the dataclass."""
    from _results import finetuned
    from pipelines.results import FinetuneResult
    from tasks.errors import LayercutError

    stored = finetuned(layers=3, kept_layers=[0, 1, 5], train_workers=[{"rank": 0}]).to_json()
    assert FinetuneResult.from_json(stored).to_json() == stored
    older = {key: value for key, value in stored.items() if key not in ("masked_pairs", "train_workers")}
    with pytest.raises(LayercutError, match=r"^runs/x/summary.json was written by another layercut "
                                            r"version \(missing: masked_pairs; unknown: none\)"):
        FinetuneResult.from_json(older, "runs/x/summary.json")
    with pytest.raises(LayercutError, match=r"missing: none; unknown: tokens"):
        FinetuneResult.from_json({**stored, "tokens": 1}, "runs/x/summary.json")


def test_a_local_run_hands_writers_in_other_processes_its_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = RunStore("runs/x").create().files
    # Ray Train resolves its own local filesystem; a Ray task's working directory is not ours.
    assert files.storage("ray") == (None, str(tmp_path / "runs" / "x" / "ray"))
    assert files.where("model") == str(tmp_path / "runs" / "x" / "model")
    assert files.for_task().root == tmp_path / "runs" / "x"
