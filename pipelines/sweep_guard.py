"""The sweep's resume guard: a model's earlier results in a run directory came from the same
configuration, or the run stops. sweep.json records, per model label, the fingerprint of what
determines its trials' results and those settings flattened (to name the keys that differ)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.fingerprints import digest, flatten
from pipelines.run_store.files import RunFiles
from pipelines.run_store.guard import Record, Refusal, check
from pipelines.run_store.run import RunStore
from pipelines.schemas.sweep import SweepConfig
from pipelines.sweep_plan import ModelPlan

SWEEP_RECORD = "sweep.json"  # {"models": {label: fingerprint}, "settings": {label: flat settings}}


def fingerprint(plan: ModelPlan) -> str:
    """The digest of a model's ``_settings``, in their order (sweep.json's fingerprint)."""
    return digest(list(_settings(plan).values()))


def _settings(plan: ModelPlan) -> dict[str, Any]:
    """What determines a model's trial results: not the grid (adding depths keeps the others),
    nor where or on how many CPUs the work runs (only finetune's worker count: the global batch)."""
    # The acknowledgement of an instruction mismatch changes no number.
    acknowledged = {"data": {"allow_instruction_mismatch"}}

    def dump(stage, exclude=()):
        return None if stage is None else stage.model_dump(
            mode="json", exclude={"workers": True, **dict.fromkeys(exclude, True), **acknowledged})

    # The order is the fingerprint's: sweep.json of earlier runs stays valid.
    settings = {"layer_loss": dump(plan.layer_loss),
                "finetune": dump(plan.finetune, {"show_progress", "force"}),
                "finetune_workers": plan.finetune.workers.num_workers,
                "evaluate": dump(plan.evaluate, {"corpus_workers", "corpus_min_texts", "show_progress"}),
                "probe_tasks": plan.probe_tasks,
                "classifiers": {name: dump(c, {"show_progress", "force"}) for name, c in plan.classifiers.items()},
                "classify": {name: dump(c, {"show_progress"}) for name, c in plan.classify.items()}}
    if plan.routes:  # a route without fields of its own (ModelPlan.routes); absent otherwise,
        # so every earlier fingerprint stays what it was
        settings["routes"] = {name: {key: dump(value) if hasattr(value, "model_dump") else value
                                     for key, value in entry.items()}
                              for name, entry in plan.routes.items()}
    return settings


def _has_results(files: RunFiles, plan: ModelPlan) -> bool:
    """Whether the run directory of ``files`` holds any result of ``plan``'s model: stage 1's
    batches folder, its zero-shot reference, or anything inside one of its trial directories."""
    label = plan.label
    patterns = [f"{label}-l*", *(f"{label}-{name}-l*" for name in plan.classifiers)]
    return _is_folder(files, f"layer-loss/{label}/batches") or _is_folder(files, f"zero-shot/{label}") or \
        any(files.names(trial) for pattern in patterns for trial in files.names("trials", pattern))


def _is_folder(files: RunFiles, name: str) -> bool:
    """Whether the folder ``name`` is there: a local directory, even empty (``exists``), or a
    prefix holding objects (an object store has no empty folders)."""
    return files.exists(name) or bool(files.names(name))


def guard_and_record(run_dir: Path | str, config: SweepConfig, plans: list[ModelPlan]) -> None:
    """A model's earlier results in this run dir came from the same configuration, or we stop
    (one line naming the model and the keys that differ). A run that stopped before any
    result, e.g. on a resource error, guards nothing.

    Raises:
        LayercutError: naming the model and each differing key.
    """
    files = RunStore(run_dir).files
    record = files.read_json(SWEEP_RECORD) if files.exists(SWEEP_RECORD) else {}
    previous, described = record.get("models", {}), record.get("settings", {})
    settings = {plan.label: flatten(_settings(plan)) for plan in plans}
    current = {plan.label: fingerprint(plan) for plan in plans}
    for plan in plans:
        label = plan.label
        recorded = Record(previous[label], described.get(label)) if label in previous else None
        check(run_dir, recorded, settings[label], fingerprint=current[label],
              has_results=recorded is not None and _has_results(files, plan),
              refusal=Refusal(f"results of {label}", "with a different configuration",
                              "use another --name or delete it"))
    files.write_json(SWEEP_RECORD, {"models": {**previous, **current}, "settings": {**described, **settings}})
    RunStore(run_dir).record_config(config)
