"""Stage results (pipelines/results.py) for tests that stand in for a stage: only the fields a
test sets matter, the rest are placeholders."""

from __future__ import annotations

from typing import Any

from pipelines.results import ClassifyResult, DepthPick, EvaluateResult, FinetuneResult, LayerLossResult


def _pick(layers: int) -> DepthPick:
    return DepthPick(layers=layers, loss=0.0, parameters=0, parameters_removed_pct=0.0)


def stage1(total: int, small: int, large: int) -> LayerLossResult:
    """Stage 1's result with these picks, of a model of ``total`` layers."""
    return LayerLossResult(model="m", model_path="m", num_layers=total, parameters_full=0,
                           small=_pick(small), large=_pick(large), rule="", num_batches=1,
                           batch_size=1, loss_scale=1.0, pooling="last_token", data={},
                           duplicates={}, prompt={"prefix": "", "suffix": ""})


def finetuned(**fields: Any) -> FinetuneResult:
    """Stage 2's result; ``fields`` override the placeholders."""
    return FinetuneResult(**{
        "model": "base", "objective": "contrastive", "layers": 1, "total_layers": 1,
        "parameters": 1, "parameters_full": 1, "parameters_removed_pct": 0.0, "steps": 0,
        "lr_decay_steps": 0, "workers": 1, "global_batch": 1, "first_loss": None,
        "final_loss": None, "mean_tokens_per_second": None, "masked_pairs": 0,
        "artifact": "model", "data": {}, "fingerprint": "", **fields})


def evaluated(**fields: Any) -> EvaluateResult:
    """Stage 3's result; ``fields`` override the placeholders."""
    return EvaluateResult(**{
        "tasks": [], "mean_per_type": {}, "mean": 0.0, "mean_interval": None, "bootstrap": None,
        "parameters": None, "layers": None, "layers_total": None, "texts_per_second": None,
        "run_dir": "", "fingerprint": "", "model_identity": "", **fields})


def classified(**fields: Any) -> ClassifyResult:
    """Stage 3's result of the classification route; ``fields`` override the placeholders."""
    return ClassifyResult(**{
        "model": "m", "dataset": "d", "split": "test", "zero_shot": True, "layers": 1,
        "layers_total": 1, "parameters": 1, "template": "", "label_names": [], "accuracy": 0.0,
        "macro_f1": 0.0, "majority_rate": 0.0, "examples": 0, "per_class_f1": {},
        "predicted_counts": {}, "texts_per_second": None, "data": "", "fingerprint": "",
        **fields})
