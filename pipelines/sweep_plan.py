"""What the sweep plans with: a model's resolved stage configs (``ModelPlan``), one depth to run
(``Trial``), and the two steps every route plans its trials with: depths -> layer selections
with their origins, selections -> trials.

Routes (pipelines/routes/) fill a ``ModelPlan``'s stage configs and turn it into ``Trial``s;
the sweep's modules above them (sweep_models, sweep_trials, sweep_tune, report) only iterate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.config import find_config, load_config
from pipelines.route_names import CLASSIFICATION, CONTRASTIVE
from tasks.errors import LayercutError
from tasks.model.depth import Depth
from tasks.model.layer_selection import LayerSelection
from tasks.trees import merge_trees

if TYPE_CHECKING:
    from pipelines.results import LayerLossResult
    from pipelines.schemas.classify import ClassifyConfig
    from pipelines.schemas.evaluate import EvaluateConfig
    from pipelines.schemas.finetune import FinetuneConfig
    from pipelines.schemas.layer_loss import LayerLossConfig


@dataclass(frozen=True)
class Trial:
    model: str  # the model's label
    layers: int  # how many layers are kept
    origins: tuple[str, ...]  # why this depth: "l3prune-small", "l3prune-large", "grid keep:0.5"
    dataset: str | None = None  # the task it is trained on, when its route has one per trial (classification)
    kept: tuple[int, ...] | None = None  # which layers, when not the first ``layers``
    # The route that planned it (a key of pipelines.routes.ROUTES; ``trials_of`` sets it).
    # None: a trial built by hand, whose route ``objective`` infers.
    route: str | None = None

    @property
    def depth(self) -> Depth:
        return Depth.parse(list(self.kept) if self.kept else self.layers)

    @property
    def objective(self) -> str:
        """The route this trial belongs to (a key of pipelines.routes.ROUTES): the one that
        planned it. A trial built without one (a hand-made list, as the tests build) is
        inferred as before routes named their trials: on a dataset, classification; else
        contrastive."""
        if self.route is not None:
            return self.route
        return CONTRASTIVE if self.dataset is None else CLASSIFICATION

    @property
    def key(self) -> str:
        task = f"-{self.dataset}" if self.dataset else ""
        depth = f"l{self.layers}" if self.kept is None else self.depth.slug  # k0-2+5-6
        return f"{self.model}{task}-{depth}"


@dataclass
class ModelPlan:
    """One model's resolved stage configs (paths inside the sweep's run dir); each route fills
    its own fields (pipelines/routes/<route>/plan.py)."""

    label: str
    layer_loss: LayerLossConfig | None  # the contrastive route's stage 1; None without it
    finetune: FinetuneConfig  # without a depth
    evaluate: EvaluateConfig | None  # without a model path (contrastive route; None without it)
    grid: list[Depth]
    # Stage 1's result (the contrastive route's L3Prune picks); None: not run (or, for --plan,
    # not recorded for this configuration), or a model without the contrastive route.
    stage1: LayerLossResult | None = None
    # The classification route, per dataset: stage 2 (objective classification) and stage 3.
    classifiers: dict[str, FinetuneConfig] = field(default_factory=dict)
    classify: dict[str, ClassifyConfig] = field(default_factory=dict)
    probe_tasks: list[str] = field(default_factory=list)  # mteb probes of the contrastive trials
    total_layers: int = 0
    # Per evaluation task: {"texts", "overlapping"}: its evaluated texts that occur in the
    # training data (tasks/evaluation/overlap.py); a task with overlap is marked in the report.
    overlap: dict[str, dict[str, int]] = field(default_factory=dict)
    # A route's own resolved settings, by route name, for a route added without a field above
    # (its ``resolve`` fills its entry; the built-in routes keep the fields above, which
    # sweep.json's fingerprint names: pipelines/sweep_guard.py).
    routes: dict[str, Any] = field(default_factory=dict)

    @property
    def contrastive(self) -> bool:
        return self.evaluate is not None

    def base_models(self) -> list[tuple[str, str | None]]:
        """(name_or_path, revision) of each model this plan loads from its source: stage 1's and
        stage 2's of each route (stage 3 loads the trained artifacts, and the zero-shot reference
        stage 2's model), then those of a later route's stage configs in ``routes`` (any value
        with a ``model`` section; its trained artifacts are its own)."""
        later = [value for settings in self.routes.values() for value in settings.values()
                 if hasattr(getattr(value, "model", None), "name_or_path")]
        stages = [self.layer_loss, self.finetune, *self.classifiers.values(), *later]
        return [(stage.model.name_or_path, stage.model.revision) for stage in stages if stage is not None]


def stage_config(model_cls, name: str, stage: str, trees: list[dict[str, Any]]):
    """The packaged or user config ``name`` of ``stage``, validated as ``model_cls`` with
    ``trees`` laid over it in order (later trees win).

    Raises:
        LayercutError: naming the stage and the config.
    """
    tree: dict[str, Any] = {}
    for extra in trees:
        tree = merge_trees(tree, extra)
    try:
        return load_config(model_cls, find_config(name, stage), [], tree)
    except LayercutError as error:
        raise LayercutError(f"{stage} config of {name}: {error}") from None


def depth_origins(depths: list[Depth], total: int, origin: str, where: str) -> dict[LayerSelection, list[str]]:
    """{layers kept: [origin of each depth that gives it]} for a model of ``total`` layers.

    Raises:
        LayercutError: a depth out of range, prefixed with ``where``.
    """
    origins: dict[LayerSelection, list[str]] = {}
    for depth in depths:
        try:
            kept = depth.select(total)
        except LayercutError as error:
            raise LayercutError(f"{where}: {error}") from None
        origins.setdefault(kept, []).append(f"{origin} {depth}")
    return origins


def trials_of(route: str, label: str, origins: dict[LayerSelection, list[str]],
              dataset: str | None = None) -> list[Trial]:
    """``route``'s trials of model ``label``: one per selection, the most layers first (a prefix
    before another selection of as many)."""
    return [Trial(label, kept.count, tuple(origins[kept]), dataset,
                  None if kept.is_prefix else kept.indices, route)
            for kept in sorted(origins, key=lambda kept: (kept.count, kept.is_prefix, kept.indices),
                               reverse=True)]


def base_layer_count(finetune: FinetuneConfig) -> int:
    """The layer count of stage 2's base model, from its config (no weights are read).

    Raises:
        LayercutError: the model cannot be found (e.g. a hub model offline).
    """
    from tasks.model.models import parameters_per_depth, resolve_model

    total, _ = parameters_per_depth(resolve_model(finetune.model.name_or_path),
                                    trust_remote_code=finetune.model.trust_remote_code,
                                    revision=finetune.model.revision)
    return total
