"""What each fine-tuned depth costs to serve: encode latency per batch and peak memory, measured
once every trial of the sweep has ended, one depth at a time.

Why after the trials, not inside each one: trials run concurrently (``tune.max_concurrent_trials``),
so a depth timed while other trials trained on the same machine got their load in its latency
(a 15-layer depth once read 3925 ms in a loaded run), and two depths of one model could not be
compared. Measured here, in order, each in a fresh Ray task with one evaluation worker's
resources (tasks/model/footprint.py), the depths of a model are timed side by side under the
same conditions, as the benchmarks are (docs/benchmarks.md).

Each measurement is kept beside its trial's result (serving.json, with the digest of the result
it belongs to), so a rerun measures only depths it has not measured, or whose trial ran again.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from pipelines.fingerprints import digest
from pipelines.route_names import CONTRASTIVE
from pipelines.run_store.run import RunStore

if TYPE_CHECKING:
    from pipelines.trial import TrialSpec

SERVING_FILE = "serving.json"  # in a trial's result directory, beside result.json
FOOTPRINT_KEYS = ("latency_ms", "latency_batch_size", "peak_memory_mib", "memory_kind")


def measure_finished(specs: dict[str, TrialSpec], outcomes: dict[str, Any]) -> dict[str, Any]:
    """``outcomes`` ({trial key: result, or {"error": ...}}) with each finished contrastive
    trial's footprint (``FOOTPRINT_KEYS``) added, measured now one trial after the other (or
    read back from its serving.json); other outcomes as they are.

    A measurement that fails leaves the trial's footprint None (the report's n/a) and says why
    in one line on stderr: the trial's scores stand without it, and a rerun measures it again.
    """
    finished = [key for key in sorted(specs, key=lambda k: (specs[k].model, -specs[k].layers))
                if specs[key].objective == CONTRASTIVE and key in outcomes and "error" not in outcomes[key]]
    measured = dict(outcomes)
    for number, key in enumerate(finished, 1):
        spec, result = specs[key], outcomes[key]
        files = RunStore(spec.result_dir).files
        stored = files.read_json(SERVING_FILE) if files.exists(SERVING_FILE) else None
        of = digest(result)  # the result it belongs to: a trial that ran again is measured again
        if stored is None or stored.get("result") != of:
            print(f"layercut: measuring encode latency and memory of {key} ({number}/{len(finished)}; "
                  "after the trials, one depth at a time)", file=sys.stderr, flush=True)
            footprint = _footprint(spec, result["artifact"])
            stored = {"result": of, **footprint} if footprint else {}
            if footprint:
                files.write_json(SERVING_FILE, stored)
        measured[key] = {**result, **{name: stored.get(name) for name in FOOTPRINT_KEYS}}
    return measured


def _footprint(spec: TrialSpec, artifact: str) -> dict[str, Any] | None:
    """``measure``'s numbers, or None (and one line on stderr) when the measurement failed."""
    from pipelines.ray_runtime import layercut_cause

    try:
        return measure(spec, artifact)
    except Exception as error:  # noqa: BLE001 - a failed measurement must not cost the report
        cause = layercut_cause(error) or error
        line = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        print(f"layercut: could not measure {spec.key} (latency and memory stay n/a; a rerun "
              f"measures it again): {line}", file=sys.stderr, flush=True)
        return None


def measure(spec: TrialSpec, artifact: str) -> dict[str, Any]:
    """Encode latency and peak memory of ``artifact`` (a path or URI) on the trial's serving
    texts, in a fresh Ray task with one evaluation worker's resources (tasks/model/footprint.py)."""
    import ray

    from pipelines.ray_runtime import plan_workers
    from tasks.export.artifact import read_layercut_file
    from tasks.model.footprint import measure_encoding
    from tasks.model.models import resolve_model
    from tasks.model.prompts import PromptConfig

    evaluate = spec.evaluate
    plan = plan_workers(evaluate.workers, jobs=1)
    source = resolve_model(artifact)  # a URI: its local copy
    facts = read_layercut_file(source.path)
    task = ray.remote(**plan.task_options)(measure_encoding)
    return ray.get(task.remote(evaluate.model.spec(source), PromptConfig(**facts["prompt"]), facts["pooling"],
                               spec.latency_texts, spec.latency_batch_size, plan.threads))
