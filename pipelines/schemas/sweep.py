"""The config of `layercut run` (pipelines/sweep.py): the models and their stage configs, the
depth grid, the classification route, Tune, latency and the budget."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from pipelines.config import DepthSetting, StrictModel
from pipelines.route_names import DEFAULT_ROUTE, RouteName
from pipelines.run_store.location import run_path
from pipelines.schemas.classify import ClassifyConfig
from pipelines.schemas.evaluate import EvaluateConfig
from pipelines.schemas.finetune import FinetuneConfig
from pipelines.schemas.layer_loss import LayerLossConfig
from tasks.model.depth import Depth

STAGE = "run"


def _check_grid(value: list[Depth] | None) -> list[Depth] | None:
    if value is not None and not value:
        raise ValueError("the grid is empty: give depths, e.g. [keep:1.0, keep:0.5, 4]")
    return value


# A list of depths to sweep (None where the field may fall back to another grid), never empty.
Grid = Annotated[list[DepthSetting] | None, AfterValidator(_check_grid)]

# The paper's grid: keep 100, 90, ..., 20 % of the layers, n = int(L * keep) (tasks/model/depth.py).
DEFAULT_GRID = [Depth.parse(f"keep:{percent / 100}") for percent in range(100, 10, -10)]


class StageOverrides(StrictModel):
    """Config trees laid over a stage's YAML (same keys as the stage config)."""

    layer_loss: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    evaluate: dict[str, Any] = Field(default_factory=dict)
    classify: dict[str, Any] = Field(default_factory=dict)  # stage 3 of the classification route

    @classmethod
    def override_tree_model(cls, field: str):
        """The stage config a tree is laid over: it types ``overrides.<stage>.key=value``."""
        return {"layer_loss": LayerLossConfig, "finetune": FinetuneConfig,
                "evaluate": EvaluateConfig, "classify": ClassifyConfig}.get(field)


class ModelEntry(StrictModel):
    config: str  # packaged per-model config name (e.g. llama3-8b) or a YAML path, for each stage
    label: str | None = None  # name in the report and trial dirs; default: the config's stem
    layer_loss: str | None = None  # stage configs when they differ from `config`
    finetune: str | None = None
    evaluate: str | None = None
    classify: str | None = None
    overrides: StageOverrides = Field(default_factory=StageOverrides)
    grid: Grid = None  # default: the sweep's grid
    # contrastive: the embedding route (L3Prune: stage 1, depths, MTEB). classification: prompt-
    # based classifiers of the `classification` section's datasets at every depth of its grid.
    objectives: list[RouteName] = Field(  # route names (pipelines/route_names.py)
        default_factory=lambda: [DEFAULT_ROUTE])

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value):
        if not value or len(set(value)) != len(value):
            raise ValueError("name each objective once: contrastive, classification or both")
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("a label names directories: letters, digits, '.', '_', '-' only")
        return value

    def name(self) -> str:
        return self.label or Path(self.config).stem


class TuneSection(StrictModel):
    # auto: as many trials as the cluster's current resources can train at once (autoscaling:
    # no limit, trials wait for nodes). Each in-flight trial is one Ray Train driver.
    max_concurrent_trials: int | str = "auto"
    autoscaling: bool = False  # the cluster adds nodes on demand: do not require resources now
    # What each trial's driver process takes: it only launches and watches Ray Train and the
    # evaluation, so no CPU (the Train workers may need every one); a sliver of Ray's built-in
    # head-node resource keeps drivers on the head, off preemptible GPU nodes (Ray's Train + Tune
    # guide). Tune needs some resource per trial; 0.01 allows 100 drivers in flight.
    driver_resources: dict[str, float] = Field(
        default_factory=lambda: {"node:__internal_head__": 0.01})
    max_failures: int = Field(1, ge=0)  # Tune retries a failed trial; its stages resume
    # Ray Tune's own logger callbacks, beside its CSV/JSON results in tune-<id>/: tensorboard
    # (event files per trial), mlflow (`pip install mlflow`; the `mlflow` section) and wandb
    # (`pip install wandb`; the `wandb` section). Each trial's parameters are its real settings
    # (model, layers kept, origins, objective, dataset); its training loss arrives while it trains.
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    mlflow: dict[str, Any] = Field(default_factory=dict)  # MLflowLoggerCallback kwargs (tracking_uri, ...)
    wandb: dict[str, Any] = Field(default_factory=dict)  # WandbLoggerCallback kwargs (project, ...)

    @field_validator("max_concurrent_trials")
    @classmethod
    def _concurrency(cls, value):
        if isinstance(value, str) and value != "auto" or isinstance(value, int) and value < 1:
            raise ValueError("max_concurrent_trials is a positive number or 'auto'")
        return value


class LatencySection(StrictModel):
    texts: int = Field(64, ge=2)  # documents of the training data, encoded in batches
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _enough(self):
        if self.texts < 2 * self.batch_size:
            raise ValueError("latency.texts must be at least 2 x latency.batch_size (one warm-up batch)")
        return self


class BudgetSection(StrictModel):
    """Name the best depth per model within these limits (either or both)."""

    max_parameters: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class ClassificationRoute(StrictModel):
    """The second use case ("Why Lift so Heavy?"): for every model whose objectives include
    classification, each dataset is prompt-tuned and scored at each depth."""

    # Preset names: tasks/classification/classification_datasets.yaml.
    datasets: list[str] = Field(default_factory=lambda: ["sst2"])
    grid: Grid = None  # None: the sweep's grid
    layers: list[DepthSetting] | None = None  # explicit depths; wins over the grid
    zero_shot: bool = True  # score the unpruned model with the same prompt: the reference line
    # mteb's logistic-regression probe of the contrastive trials' encoders on the same datasets,
    # so the two routes sit side by side (models with both objectives).
    probe: bool = True

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value):
        from tasks.classification.classification_presets import PRESETS  # package data: no I/O here

        unknown = [name for name in value if name not in PRESETS]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"datasets are distinct packaged names ({', '.join(PRESETS)}); "
                             f"got {value}")
        return value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value):
        if value is not None and not value:
            raise ValueError("layers is empty: give depths, or leave it out to use the grid")
        return value


class SweepConfig(StrictModel):
    name: str | None = None  # run name; default: sweep-<first model>
    # A local directory (on a cluster: a filesystem every node mounts) or an object store URI.
    output_dir: str = "runs"
    address: str | None = None  # None: RAY_ADDRESS / a running cluster, else start one in-process
    data_root: str | None = None  # local mirror for every stage (also LAYERCUT_DATA_ROOT)
    grid: Annotated[list[DepthSetting], AfterValidator(_check_grid)] = Field(
        default_factory=lambda: list(DEFAULT_GRID))
    # Add stage 1's L3Prune depths to the grid: both picks (true), only the small or the large
    # one, or none (false; stage 1 still runs, and the report shows its picks).
    l3prune: bool | Literal["small", "large"] = True
    # Evaluate each contrastive depth also untrained (the base model cut alike, no fine-tuning;
    # pipelines/routes/contrastive/untrained.py): the report's change between the two is the method's effect.
    # false halves stage 3's MTEB work and leaves that column n/a (as it stays for trials that
    # finished while it was false: a finished trial is not evaluated again).
    untrained_baseline: bool = True
    overrides: StageOverrides = Field(default_factory=StageOverrides)  # for every model
    models: list[ModelEntry]
    tune: TuneSection = Field(default_factory=TuneSection)
    latency: LatencySection = Field(default_factory=LatencySection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    classification: ClassificationRoute = Field(default_factory=ClassificationRoute)
    show_progress: bool = True

    @field_validator("models")
    @classmethod
    def _models(cls, value):
        if not value:
            raise ValueError("name at least one model")
        labels = [entry.name() for entry in value]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"model labels must differ; repeated: {repeated} (set label:)")
        return value

    def run_name(self) -> str:
        return self.name or f"sweep-{self.models[0].name()}"

    def run_dir(self) -> Path | str:
        """The run directory: a Path, or 's3://.../<name>' when ``output_dir`` is a URI."""
        return run_path(self.output_dir, self.run_name())
