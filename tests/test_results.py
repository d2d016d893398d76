"""The stages' results (pipelines/results.py): the keys each ``to_json`` writes, in the order the
files have always had them (selection.json, summary.json), and the stored results that rebuild
from them. ``to_json`` is built from the fields, so these lists are what fails when a field is
added, dropped or moved."""

from __future__ import annotations

from _results import classified, finetuned, stage1

from pipelines.results import ClassifyResult, FinetuneResult, LayerLossResult, SweepResult

PICK_KEYS = ["layers", "loss", "parameters", "parameters_removed_pct"]


def test_selection_json_keys_and_round_trip():
    result = stage1(30, 6, 22)
    record = result.to_json()
    assert list(record) == ["model", "model_path", "num_layers", "parameters_full", "small", "large",
                            "rule", "num_batches", "batch_size", "loss_scale", "pooling", "data",
                            "duplicates", "prompt"]
    assert list(record["small"]) == list(record["large"]) == PICK_KEYS
    assert LayerLossResult.from_json(record) == result


def test_finetune_summary_keys_with_and_without_kept_layers_and_round_trip():
    keys = ["model", "objective", "layers", "total_layers", "parameters", "parameters_full",
            "parameters_removed_pct", "steps", "lr_decay_steps", "workers", "global_batch",
            "first_loss", "final_loss", "mean_tokens_per_second", "masked_pairs", "artifact", "data",
            "fingerprint", "train_workers"]
    prefix = finetuned(layers=3, train_workers=[{"rank": 0}])
    assert list(prefix.to_json()) == keys  # a prefix: no kept_layers key at all
    assert FinetuneResult.from_json(prefix.to_json()) == prefix
    kept = finetuned(layers=3, kept_layers=[0, 1, 5])
    assert list(kept.to_json()) == keys[:4] + ["kept_layers"] + keys[4:]
    assert kept.to_json()["kept_layers"] == [0, 1, 5]
    assert FinetuneResult.from_json(kept.to_json()) == kept


def test_classify_summary_keys_and_round_trip():
    result = classified(label_names=["a", "b"], per_class_f1={"a": 0.5, "b": 0.25},
                        predicted_counts={"a": 3, "b": 1})
    assert list(result.to_json()) == ["model", "dataset", "split", "zero_shot", "layers",
                                      "layers_total", "parameters", "template", "label_names",
                                      "accuracy", "macro_f1", "majority_rate", "examples",
                                      "per_class_f1", "predicted_counts", "texts_per_second", "data",
                                      "fingerprint"]
    assert ClassifyResult.from_json(result.to_json()) == result


def test_sweep_summary_spreads_the_routes_keys_between_run_dir_and_overlap():
    result = SweepResult(run_dir="/runs/s", routes={"trials": [], "pareto": {}, "classification": {}},
                         overlap={}, failed=["k"])
    assert list(result.to_json()) == ["run_dir", "trials", "pareto", "classification", "overlap",
                                      "failed"]
