"""The sweep's Ray Tune adapter: one Tune experiment over every trial of every model, resumed
when it exists; each trial is pipelines/trial.py's ``run_trial``. Returns each trial's result
(its result.json) or the error that stopped it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.ray_runtime import layercut_cause, user_errors_from_ray
from pipelines.run_store.location import is_uri
from pipelines.run_store.run import RunStore
from pipelines.schemas.sweep import SweepConfig, TuneSection
from tasks.errors import LayercutError
from tasks.object_store import store_environment

if TYPE_CHECKING:
    from pipelines.trial import TrialSpec


def run_experiment(config: SweepConfig, specs: dict[str, TrialSpec], concurrency: int | None,
                   run_dir: Path | str) -> dict[str, Any]:
    """Run (or resume) the Tune experiment of ``specs`` with at most ``concurrency`` trials at
    once (None: no limit) in ``run_dir`` (a local path, or a URI: Tune's files go to the store
    through its pyarrow filesystem); returns {trial key: result dict, or {"error": one line}}."""
    import ray.tune as tune

    from pipelines.trial import run_trial

    files = RunStore(run_dir).files
    # A trial opens the store by URI in its own processes (finetune, evaluate, its result.json,
    # a base model given as a URI), which Ray may have started without the driver's AWS_*
    # settings: they travel with the trial. (Training data goes through Ray Data's read tasks
    # with the filesystem of tasks/object_store.filesystem_of, which carries the keys itself.)
    on_store = is_uri(run_dir) or any(is_uri(spec.finetune.model.name_or_path) for spec in specs.values())
    environment = store_environment() if on_store else {}
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=specs, environment=environment),
                                    dict(config.tune.driver_resources))
    # One experiment per trial list: changing the grid starts a new experiment, whose trials
    # that already finished return their saved result at once.
    keys = sorted(specs)
    experiment = "tune-" + hashlib.sha256(json.dumps(["v2", *keys]).encode()).hexdigest()[:8]
    storage, path = files.storage(experiment)  # storage: None locally (Tune's own filesystem)
    if tune.Tuner.can_restore(path, storage_filesystem=storage):
        print(f"layercut: resuming the Tune experiment in {files.where(experiment)}", file=sys.stderr)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True,
                                   storage_filesystem=storage)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search([trial_params(specs[key]) for key in keys])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency,
                                        trial_dirname_creator=lambda t: t.config["trial"]["key"]),
            run_config=tune.RunConfig(
                name=experiment, storage_path=files.storage("")[1], storage_filesystem=storage,
                callbacks=logger_callbacks(config.tune),
                failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
                verbose=1))
    with user_errors_from_ray():
        grid = tuner.fit()
    outcomes: dict[str, Any] = {}
    for result in grid:
        key = result.config["trial"]["key"]
        if result.error is not None:
            cause = layercut_cause(result.error)
            text = str(cause) if cause else str(result.error).strip().splitlines()[-1]
            outcomes[key] = {"error": text}
        else:
            outcomes[key] = _read_result(specs[key].result_dir)
    return outcomes


def trial_params(spec: TrialSpec) -> dict[str, Any]:
    """A trial's Tune parameters: its real settings, so Tune's tables and loggers (TensorBoard
    hparams, MLflow params) show score against layers kept, not an opaque key."""
    return {"key": spec.key, "model": spec.model, "base_model": spec.finetune.model.name_or_path,
            "layers": spec.layers, "origins": ", ".join(spec.origins),
            "objective": spec.objective, "dataset": spec.dataset or ""}


def logger_callbacks(tune_section: TuneSection) -> list:
    """Tune's CSV and JSON result loggers, plus the ones the config switches on. Tune's automatic
    loggers are off, so TensorBoard event files appear only when asked for.

    Raises:
        LayercutError: a logger whose package is not installed.
    """
    import os

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback()]
    for name in tune_section.loggers:
        try:
            if name == "tensorboard":
                callbacks.append(TBXLoggerCallback())
            elif name == "mlflow":
                from ray.air.integrations.mlflow import MLflowLoggerCallback

                callbacks.append(MLflowLoggerCallback(**{"experiment_name": "layercut", **tune_section.mlflow}))
            else:
                from ray.air.integrations.wandb import WandbLoggerCallback

                callbacks.append(WandbLoggerCallback(**{"project": "layercut", **tune_section.wandb}))
        except (ImportError, ModuleNotFoundError) as error:
            raise LayercutError(f"tune.loggers: {name} needs its package ({error}): pip install {name}") from None
    return callbacks


def _read_result(trial_dir: str) -> dict[str, Any]:
    from pipelines.trial import RESULT_FILE

    result = RunStore(trial_dir).finished(RESULT_FILE, announce=False)
    if result is None:  # Tune stopped (Ctrl-C) before the trial ended
        return {"error": "not finished; rerun the same command to resume it"}
    return result
