"""Stage 1: per-layer initial contrastive loss and the L3Prune choice of two depths.

Ray Data samples the triplet batches; K Ray tasks (one per GPU on a cluster) each load the model
once and scan their share of batches in one forward pass per batch; the driver combines the
per-layer means, saves every finished batch (so a rerun resumes), picks the small and large depth
and writes the outputs: layer_losses.{json,csv}, selection.json, layer_loss.png.

    layercut layer-loss --config smollm2-135m --data-root ../shared/data
    python -m pipelines.layer_loss --config llama3-8b
"""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.commands import Stage, run_as_script
from pipelines.fingerprints import digest
from pipelines.plots import plot_layer_losses
from pipelines.ray_runtime import ensure_ray, plan_workers, user_errors_from_ray
from pipelines.results import DepthPick, LayerLossResult
from pipelines.run_store.guard import Refusal
from pipelines.run_store.run import RunStore
from pipelines.schemas.layer_loss import STAGE, LayerLossConfig
from tasks.errors import LayercutError
from tasks.model.models import ModelSource, load_tokenizer, parameters_per_depth, resolve_model
from tasks.model.prompts import PromptFormatter
from tasks.scan.layer_scan import combine
from tasks.scan.selection import choose_depths
from tasks.training.data import resolve_source, sample_triplet_batches


def _fingerprint(config: LayerLossConfig, source: ModelSource, data_path: str,
                 wrapper: tuple[str, str]) -> str:
    """The digest of ``_settings``: a run dir only resumes batches of the same."""
    return digest(_settings(config, source, data_path, wrapper))


def _settings(config: LayerLossConfig, source: ModelSource, data_path: str,
              wrapper: tuple[str, str]) -> dict[str, Any]:
    """What determines the numbers (not where or in what forward batch size they run)."""
    return {
        "model": [source.path, config.model.revision, config.model.dtype],
        "encoder": config.encoder.model_dump(exclude={"forward_batch_size"}),
        "wrapper": list(wrapper),  # the rendered chat-template prefix and suffix
        "data": [data_path, config.data.layout, config.data.columns, config.data.invalid_rows,
                 config.data.num_batches, config.data.batch_size, config.data.seed],
        "loss": config.loss.model_dump(),
    }


# Batches of another configuration are never mixed in; a run that failed before its first batch
# leaves nothing to guard.
REFUSAL = Refusal("results", "of a different configuration", "choose another --name or delete it")


class _BatchStore:
    """Finished batches' per-layer losses, one file each (for resume): batches/batch-<i>.json
    ({"batch": i, "losses": [one per layer]}), the guard's record beside them."""

    def __init__(self, store: RunStore, settings: dict[str, Any]):
        self.items = store.items("batches", "batch-{key:05d}.json")
        self.guard = store.guard("batches/fingerprint.json")
        self.settings = settings
        self.guard.check(settings, has_results=self.items.any("batch-*.json"), refusal=REFUSAL)

    def load(self, indices: range, num_layers_: int) -> dict[int, np.ndarray]:
        done = {}
        for index in self.items.done(indices):
            losses = np.asarray(self.items.load(index)["losses"], dtype=np.float64)
            if losses.shape == (num_layers_,):
                done[index] = losses
        return done

    def save(self, index: int, losses: np.ndarray) -> None:
        if self.guard.recorded() is None:
            self.guard.record(self.settings)
        self.items.save(index, {"batch": index, "losses": losses.tolist()})


def _scan_with_ray(config: LayerLossConfig, spec, pending: list[tuple[int, dict]], on_result) -> None:
    import ray

    from tasks.scan.layer_loss_task import layer_loss_task

    plan = plan_workers(config.workers, len(pending))
    task = layer_loss_task.options(**plan.resources)
    generators = [
        task.remote(spec, config.encoder.prompt(), config.encoder.pooling,
                    _forward_batch_size(config), config.loss.scale, pending[k::plan.count], plan.threads,
                    config.loss.mask_duplicate_positives)
        for k in range(plan.count)
    ]
    try:
        with user_errors_from_ray():
            while generators:
                ready, generators = ray.wait(generators, num_returns=1)
                for generator in ready:
                    try:
                        ref = next(generator)
                    except StopIteration:
                        continue
                    on_result(*ray.get(ref))
                    generators.append(generator)
    finally:
        for generator in generators:  # on error, stop the other tasks too
            try:
                ray.cancel(generator)
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass


def _forward_batch_size(config: LayerLossConfig) -> int:
    return config.encoder.forward_batch_size or 3 * config.data.batch_size


def _scan_in_process(config: LayerLossConfig, spec, pending: list[tuple[int, dict]], on_result) -> None:
    from tasks.model.encoder import build_encoder
    from tasks.scan.layer_scan import scan_batches

    encoder = build_encoder(spec, config.encoder.prompt(), pooling=config.encoder.pooling,
                            batch_size=_forward_batch_size(config))
    for index, losses in scan_batches(encoder, pending, config.loss.scale,
                                      config.loss.mask_duplicate_positives):
        on_result(index, losses)


def run(config: LayerLossConfig, *, show_progress: bool = True) -> LayerLossResult:
    """Run stage 1 and write its outputs; returns its result (selection.json's record)."""
    from tqdm import tqdm

    source = resolve_model(config.model.name_or_path)
    total_layers, params = parameters_per_depth(
        source, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision)
    # Fail on a prompt setup the tokenizer cannot serve here, before any data or worker starts.
    formatter = PromptFormatter(load_tokenizer(source, trust_remote_code=config.model.trust_remote_code,
                                               revision=config.model.revision), config.encoder.prompt())
    wrapper = (formatter.prefix, formatter.suffix)
    data_path = resolve_source(config.data.source, config.data.local_source, config.data.data_root)
    run = RunStore(config.run_dir()).create()
    store = _BatchStore(run, _settings(config, source, data_path, wrapper))
    run.record_config(config)

    ensure_ray(config.workers.address)
    batches, data_report = sample_triplet_batches(
        data_path, num_batches=config.data.num_batches, batch_size=config.data.batch_size,
        seed=config.data.seed, invalid_rows=config.data.invalid_rows, columns=config.data.columns,
        layout=config.data.layout)
    if data_report["skipped_rows"]:
        print(f"layercut: skipped {data_report['skipped_rows']} of {data_report['rows']} rows "
              f"(a field missing, empty or not text); first: {data_report['first_problem']}", file=sys.stderr)

    per_batch = store.load(range(len(batches)), total_layers)
    pending = [(i, batch) for i, batch in enumerate(batches) if i not in per_batch]
    bar = tqdm(total=len(batches), initial=len(per_batch), desc="per-layer loss", unit="batch",
               disable=not show_progress)

    def on_result(index: int, losses: np.ndarray) -> None:
        store.save(index, losses)
        if index not in per_batch:  # a retried Ray task may deliver a batch twice
            bar.update(1)
        per_batch[index] = losses

    spec = config.model.spec(source)
    if pending:
        if config.workers.executor == "ray":
            _scan_with_ray(config, spec, pending, on_result)
        else:
            _scan_in_process(config, spec, pending, on_result)
    bar.close()

    losses = combine(per_batch)
    if not np.all(np.isfinite(losses)):
        bad = [i + 1 for i, value in enumerate(losses) if not math.isfinite(value)]
        raise LayercutError(f"the loss is not finite at layers {bad}: check the model's dtype")
    small, large = choose_depths(losses.tolist())
    summary = _summary(config, source, total_layers, params, losses, small, large, data_report,
                       _duplicate_report(config, batches), wrapper)
    _write_outputs(run, summary, losses, params)
    plot_layer_losses(losses.tolist(), small, large,
                      f"{config.model.name_or_path}: loss of the model cut to l layers",
                      partial(run.files.write_text, "layer_loss.png"))
    return summary


def _duplicate_report(config: LayerLossConfig, batches: list[dict]) -> dict[str, Any]:
    """How many (query, candidate) pairs of the sample are false negatives (a duplicate of the
    query's positive, or another answer of the same query) and whether the loss masked them."""
    from tasks.scan.layer_scan import duplicate_mask

    counts = [int(duplicate_mask(batch).sum()) for batch in batches]
    return {"masked": config.loss.mask_duplicate_positives, "pairs": sum(counts),
            "batches_with_duplicates": sum(1 for c in counts if c)}


def _depth_entry(depth: int, params: list[int], losses: np.ndarray) -> DepthPick:
    """The model cut to ``depth`` layers: its loss (``losses[depth - 1]``, nats; ``losses`` has
    one per depth 1..L), parameters (``params[depth]``; ``params[-1]`` is the whole model's) and
    the percent removed. One record for both uses: selection.json's picks and each row of
    layer_losses.json/.csv."""
    return DepthPick(layers=depth, loss=float(losses[depth - 1]), parameters=params[depth],
                     parameters_removed_pct=round(100.0 * (1 - params[depth] / params[-1]), 2))


def _summary(config, source, total_layers, params, losses, small, large, data_report, duplicates,
             wrapper) -> LayerLossResult:
    return LayerLossResult(
        model=config.model.name_or_path,
        model_path=source.path,
        num_layers=total_layers,
        parameters_full=params[-1],
        small=_depth_entry(small, params, losses),
        large=_depth_entry(large, params, losses),
        rule="small = argmin loss over 1..floor(L/2); large = argmin over floor(L/2)+1..L",
        num_batches=config.data.num_batches,
        batch_size=config.data.batch_size,
        loss_scale=config.loss.scale,
        pooling=config.encoder.pooling,
        data=data_report,
        duplicates=duplicates,
        prompt={"prefix": wrapper[0], "suffix": wrapper[1]},  # exactly what wrapped texts
    )


def _write_outputs(run: RunStore, summary: LayerLossResult, losses: np.ndarray, params: list[int]) -> None:
    """layer_losses.json and .csv (one row per depth, the picks' record) and selection.json."""
    rows = [_depth_entry(depth, params, losses).to_json() for depth in range(1, len(losses) + 1)]
    run.files.write_json("layer_losses.json", {"model": summary.model, "layers": rows})
    run.files.write_csv("layer_losses.csv", list(rows[0]), [list(row.values()) for row in rows])
    run.save_result("selection.json", summary.to_json())


def print_summary(summary: LayerLossResult, run_dir: Path | str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"L3Prune picks for {summary.model} ({summary.num_layers} layers)")
    for column in ("pick", "layers kept", "loss", "parameters", "removed"):
        table.add_column(column, justify="right")
    table.add_row("full", str(summary.num_layers), "", f"{summary.parameters_full / 1e6:.1f}M", "0%")
    for pick, entry in (("large", summary.large), ("small", summary.small)):
        table.add_row(pick, str(entry.layers), f"{entry.loss:.4f}",
                      f"{entry.parameters / 1e6:.1f}M", f"{entry.parameters_removed_pct:.1f}%")
    console = Console()
    console.print(table)
    console.print(f"outputs in {run_dir}: layer_losses.json, layer_losses.csv, selection.json, "
                  "layer_loss.png")


def render(config: LayerLossConfig, summary: LayerLossResult) -> int:
    print_summary(summary, config.run_dir())
    return 0


# `layercut layer-loss` (registered in pipelines/cli.py)
ENTRY = Stage(LayerLossConfig, STAGE, run, render, progress_argument=True)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut layer-loss` runs.
    from pipelines import layer_loss

    sys.exit(run_as_script("layer-loss", layer_loss.ENTRY))
