"""What each stage's ``run(config)`` returns: one frozen dataclass per stage.

A stage returns its result typed; consumers (the CLI's rendering, the sweep's trial code and
routes, the report) read attributes. What a stage writes to disk is ``to_json()``: exactly the
dict it wrote before these types existed (same keys, same order), so summary.json and
selection.json stay byte-identical. ``to_json`` is built from the fields (``dataclasses.asdict``),
so a field added to a result is written too; the field order is the files' key order. (asdict
copies containers and rebuilds a dict subclass from its pairs, which a Counter or defaultdict
would not survive on Python 3.11: fields hold plain dicts.) A finished run
("already finished -> the stored result") rebuilds its result from the stored JSON with
``from_json``.

This module imports nothing of the project but its error type (tasks/errors.py): the stages,
routes and tests all import it.

| stage | ``run`` returns | stored as |
|---|---|---|
| stage 1, pipelines/layer_loss.py | ``LayerLossResult`` | selection.json |
| stage 2, pipelines/finetune.py | ``FinetuneResult`` | summary.json |
| stage 3, pipelines/evaluate.py | ``EvaluateResult`` | (summary.md, summary.csv) |
| stage 3 (classification), pipelines/classify.py | ``ClassifyResult`` | summary.json |
| the sweep, pipelines/sweep.py | ``SweepResult`` | summary.json |

A sweep trial's result (result.json, written by its route's ``evaluate_trial``) stays a dict:
its keys are the route's and the report reads them back by name (pipelines/routes/*/trial.py).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from tasks.errors import LayercutError


def _stored(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (a stored result read from ``where``) checked against ``cls``'s fields.

    Raises:
        LayercutError: when a field without a default is missing or a key is unknown (a result
            written by another layercut version): one line naming the file and the keys.
    """
    names = {f.name for f in fields(cls)}
    missing = sorted(f.name for f in fields(cls) if f.name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    unknown = sorted(set(data) - names)
    if missing or unknown:
        raise LayercutError(f"{where} was written by another layercut version (missing: "
                            f"{', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'}): "
                            "move it aside to run this stage again")
    return data


@dataclass(frozen=True)
class DepthPick:
    """One of L3Prune's picks of stage 1.

    Fields:
        layers: layers kept (the model cut to its first ``layers`` layers).
        loss: stage 1's mean contrastive loss (InfoNCE, nats) of the model cut there.
        parameters: parameters of the cut model (count).
        parameters_removed_pct: percent of the whole model's parameters removed (2 decimals).
    """

    layers: int
    loss: float
    parameters: int
    parameters_removed_pct: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerLossResult:
    """Stage 1's result (selection.json).

    Fields:
        model: the config's ``model.name_or_path``; model_path: where it was loaded from.
        num_layers: the base model's layer count L; parameters_full: its parameters (count).
        small, large: L3Prune's picks (``DepthPick``); rule: how they were picked, in words.
        num_batches, batch_size: the sampled triplet batches (batches, triplets per batch).
        loss_scale: the InfoNCE scale (inverse temperature); pooling: the encoder's pooling.
        data: the data report (``rows``, ``skipped_rows``, ``first_problem``).
        duplicates: false-negative pairs of the sample (``masked``, ``pairs``,
            ``batches_with_duplicates``).
        prompt: the rendered wrapper (``prefix``, ``suffix``) that wrapped every text.
    """

    model: str
    model_path: str
    num_layers: int
    parameters_full: int
    small: DepthPick
    large: DepthPick
    rule: str
    num_batches: int
    batch_size: int
    loss_scale: float
    pooling: str
    data: dict[str, Any]
    duplicates: dict[str, Any]
    prompt: dict[str, str]

    def pick(self, name: str) -> DepthPick:
        """The pick named ``name``: "small" or "large" (a sweep's ``l3prune`` setting)."""
        return {"small": self.small, "large": self.large}[name]

    def to_json(self) -> dict[str, Any]:
        """selection.json's record (the picks as ``DepthPick.to_json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "selection.json") -> LayerLossResult:
        """The result stored in ``where``. Raises LayercutError (``_stored``)."""
        data = _stored(cls, data, where)
        return cls(**{**data, **{name: DepthPick(**_stored(DepthPick, data[name], f"{where} ({name})"))
                                 for name in ("small", "large")}})


@dataclass(frozen=True, kw_only=True)
class FinetuneResult:
    """Stage 2's result (summary.json).

    Fields:
        model: the base model (``model.name_or_path``); objective: the route trained
            ("contrastive", "classification").
        layers: layers kept; total_layers: the base model's; kept_layers: which (0-based) when
            they are not the first ``layers`` (None: a prefix; then absent from the JSON).
        parameters, parameters_full: of the cut and of the whole model (counts, with the LM head
            when the objective keeps it); parameters_removed_pct: percent removed (2 decimals).
        steps: optimizer steps done; lr_decay_steps: the learning rate's decay horizon (steps).
        workers: Ray Train workers; global_batch: rows per step over all workers.
        first_loss, final_loss: the training loss at the first and last step (None: no step).
        mean_tokens_per_second: training throughput over the run (tokens/s; None: no step).
        masked_pairs: false-negative pairs masked out of the loss over the run (count).
        artifact: the exported model directory (absolute path, or its URI on an object store).
        data: the data report (``rows``, ``skipped_rows``, ``first_problem``).
        fingerprint: the digest of the settings that determine the weights.
        train_workers: per rank, where its worker ran (``rank``, Ray node id, node IP); [] for a
            summary written before placements were recorded.
    """

    model: str
    objective: str
    layers: int
    total_layers: int
    kept_layers: list[int] | None = None
    parameters: int
    parameters_full: int
    parameters_removed_pct: float
    steps: int
    lr_decay_steps: int
    workers: int
    global_batch: int
    first_loss: float | None
    final_loss: float | None
    mean_tokens_per_second: float | None
    masked_pairs: int
    artifact: str
    data: dict[str, Any]
    fingerprint: str
    train_workers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """summary.json's record; ``kept_layers`` only when the layers kept are not a prefix
        (a prefix run's summary.json has never had the key)."""
        record = asdict(self)
        if self.kept_layers is None:
            del record["kept_layers"]
        return record

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "summary.json") -> FinetuneResult:
        """The result stored in ``where``. Raises LayercutError (``_stored``)."""
        return cls(**_stored(cls, data, where))


@dataclass(frozen=True, kw_only=True)
class EvaluateResult:
    """Stage 3's result (MTEB). Written as summary.md and summary.csv, not as JSON.

    Fields:
        tasks: one row per task: {"task", "type", "main_score" (mteb's main score, 0..1),
            "splits", "subsets" (what was scored), "interval" (bootstrap 95% interval of the
            main score; None when the task ran in full)}.
        mean_per_type: {task type: mean main score}; mean: the mean over tasks.
        mean_interval: bootstrap 95% interval of ``mean`` (a subsampled run), else None.
        bootstrap: the resampling (``resamples``, ``seed``, ``level``, ``resampled``), else None.
        parameters, layers, layers_total: of what was evaluated (None: a sentence-transformers
            folder).
        texts_per_second: encode throughput over the run's tasks (texts/s; None: none ran).
        run_dir: the run directory; fingerprint: the digest of the settings that decide every
            score; model_identity: the model's content identity (tasks/model/model_identity.py).
        items: per subsampled task, the evaluated items its score was computed from (for paired
            bootstrap intervals, tasks/evaluation/bootstrap.py); None when tasks ran in full.
    """

    tasks: list[dict[str, Any]]
    mean_per_type: dict[str, float]
    mean: float
    mean_interval: list[float] | None
    bootstrap: dict[str, Any] | None
    parameters: int | None
    layers: int | None
    layers_total: int | None
    texts_per_second: float | None
    run_dir: str
    fingerprint: str
    model_identity: Any
    items: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ClassifyResult:
    """Stage 3's result for the classification route (summary.json).

    Fields:
        model: the scored model (``model.name_or_path``); dataset: the data set's label;
            split: the test split scored.
        zero_shot: True when the config's prompt scored a base model (no prompt-tuned artifact).
        layers, layers_total: layers kept, of the base model's; parameters: of the scored model
            (count, LM head included).
        template: the prompt template; label_names: the labels, in score order.
        accuracy, macro_f1, majority_rate: fractions, 0..1 (majority_rate: the most frequent
            gold label's share, the accuracy of always answering it).
        examples: test rows scored; per_class_f1: {label: F1}; predicted_counts: {label: count}.
        texts_per_second: scoring throughput (texts/s; None: nothing was timed).
        data: the test split's path; fingerprint: the digest of what decides the scores.
    """

    model: str
    dataset: str
    split: str
    zero_shot: bool
    layers: int
    layers_total: int
    parameters: int
    template: str
    label_names: list[str]
    accuracy: float
    macro_f1: float
    majority_rate: float
    examples: int
    per_class_f1: dict[str, float]
    predicted_counts: dict[str, int]
    texts_per_second: float | None
    data: str
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """summary.json's record."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "summary.json") -> ClassifyResult:
        """The result stored in ``where``. Raises LayercutError (``_stored``)."""
        return cls(**_stored(cls, data, where))


@dataclass(frozen=True)
class SweepResult:
    """The sweep's result (summary.json).

    Fields:
        run_dir: the sweep's run directory (absolute).
        routes: each route's keys of summary.json, in ``pipelines.routes.registry.ROUTES`` order
            (``RouteReport.summary``: the contrastive route's trials, Pareto front, budget and
            stage-1 picks; the classification route's "classification").
        overlap: per model label, per evaluation task {"texts", "overlapping"} (models with any).
        failed: the keys of the trials that failed (rerunning retries them).
    """

    run_dir: str
    routes: dict[str, Any]
    overlap: dict[str, dict[str, dict[str, int]]]
    failed: list[str]

    def to_json(self) -> dict[str, Any]:
        """summary.json's record: the routes' keys spread where ``routes`` stands (between
        run_dir and overlap), as the report's readers expect them at the top level."""
        record: dict[str, Any] = {}
        for name, value in asdict(self).items():
            record.update(value if name == "routes" else {name: value})
        return record
