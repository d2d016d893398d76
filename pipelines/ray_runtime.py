"""Ray glue shared by the stages: connecting, sizing the worker pool, surfacing user errors."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipelines.sections import RayWorkersSection
from tasks.errors import LayercutError


# Where the README says how to authenticate: the one place users are sent to.
AUTH_HELP = ("with Ray's token authentication on the cluster, export RAY_AUTH_MODE=token and make its "
             "token available (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); "
             "see the README, 'Ray token authentication'")


def ensure_ray(address: str | None) -> None:
    """Connect to the cluster (RAY_ADDRESS, a local `ray start`) or start Ray in-process.

    Raises:
        LayercutError: the cluster refused this process's authentication token, or could not be
            reached (Ray reports a wrong or missing token under ``RAY_AUTH_MODE=disabled`` as a
            plain connection failure after its retries, so both say what to set).
    """
    import ray
    from ray.exceptions import AuthenticationError

    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True,
                     configure_logging=True)
        except AuthenticationError as error:
            reason = str(error).split(". ")[0]
            raise LayercutError(f"Ray authentication failed ({reason}): {AUTH_HELP}") from None
        except ConnectionError as error:
            raise LayercutError(f"{error}: is the cluster up (`ray status`)? If it is, {AUTH_HELP}") from None
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # the stages show their own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution plans


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    use_gpu: bool
    cpus: float
    threads: int  # torch threads per CPU worker; 0 on GPU workers

    @property
    def resources(self) -> dict[str, float]:
        return {"num_gpus": 1 if self.use_gpu else 0, "num_cpus": self.cpus}

    @property
    def task_options(self) -> dict[str, float]:
        """``ray.remote(**task_options)(function)``: its resources, and on a GPU one task per worker
        process (max_calls can only be given to ``ray.remote``, not to ``.options``). A reused
        process would keep its CUDA context, its cached memory and the GPU it first saw
        (CUDA_VISIBLE_DEVICES) while Ray assigns the next task another one. On CPU a pooled worker
        is reused warm (0: no limit)."""
        return {**self.resources, "max_calls": 1 if self.use_gpu else 0}


# Where `ray job submit --working-dir` unpacks a job's code on a node: the job's cwd.
JOB_COPY = "/runtime_resources/working_dir_files/"


def refuse_output_in_a_job_copy(output_dir: str, cwd: str) -> None:
    """Refuse a relative ``output_dir`` when this process runs in a Ray job's copy of its working
    directory (``cwd`` under Ray's runtime resources): results would go into that temporary
    copy on the head node, which Ray deletes once the job is gone, while a trial's workers on
    other nodes wrote into their own copies. Before any work, in one line.

    Raises:
        LayercutError: naming the relative path, where it would go, and the fix.
    """
    from tasks.object_store import is_uri

    relative = not is_uri(output_dir) and not Path(output_dir).expanduser().is_absolute()
    if relative and JOB_COPY in cwd.replace("\\", "/"):
        raise LayercutError(
            f"output_dir {output_dir!r} is relative and this runs as a Ray job in its temporary copy of "
            f"the working directory ({cwd}): results there are lost with the job and each node writes "
            "its own; give an absolute path on storage every node mounts (README: Shared storage) or "
            "an s3:// or gs:// URI")


def plan_workers(workers: RayWorkersSection, jobs: int) -> WorkerPlan:
    """How many workers for ``jobs`` units of work: one per GPU when the cluster has GPUs."""
    import ray

    ensure_ray(workers.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 if workers.use_gpu == "auto" else bool(workers.use_gpu)
    if use_gpu and gpus == 0 and not workers.wait_for_resources:
        raise LayercutError("workers.use_gpu is true but the Ray cluster has no GPU")
    count = workers.num_workers if workers.num_workers != "auto" else max(1, gpus if use_gpu else 1)
    threads = 0 if use_gpu else max(1, int(workers.cpus_per_worker))
    return WorkerPlan(max(1, min(count, jobs)), use_gpu, workers.cpus_per_worker, threads)


def layercut_cause(exc: BaseException) -> LayercutError | None:
    """The LayercutError behind ``exc``, through Ray's wrappers: a task's or actor's ``cause``,
    chained exceptions, and Ray Train's per-worker failures (TrainingFailedError)."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        # A Ray task error is also an instance of its cause's class; the cause itself is the
        # clean error (its message without Ray's traceback).
        if isinstance(current, LayercutError) and not isinstance(inner, BaseException):
            return current
        stack += [inner, current.__cause__, current.__context__]
        failures = getattr(current, "worker_failures", None)
        stack += list(failures.values()) if isinstance(failures, dict) else []
        stack += list(getattr(current, "exceptions", None) or [])
    return None


@contextmanager
def user_errors_from_ray() -> Iterator[None]:
    """Re-raise a LayercutError raised inside Ray (task, actor, Train worker) as itself: one line
    for the CLI. Other errors propagate unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Ray wraps user errors in several exception types
        cause = layercut_cause(exc)
        if cause is None or cause is exc:
            raise
        raise cause from None


def stream_in_one_task(function, plan: WorkerPlan, *args):
    """Yield what the generator ``function(*args)`` yields, run as one Ray streaming task with
    ``plan``'s task options, each value as soon as it is ready. No retries: a retried generator
    would start over, while the caller's rerun resumes from what it saved. A stream the caller
    stops early (a failure saving a value) is cancelled, so the task does not run on unowned.

    Raises:
        LayercutError: the task's user-fixable error, as one line (``user_errors_from_ray``).
    """
    import ray

    remote = ray.remote(num_returns="streaming", max_retries=0, **plan.task_options)(function)
    stream = remote.remote(*args)
    finished = False
    try:
        with user_errors_from_ray():
            for value in stream:
                yield ray.get(value)
        finished = True
    finally:
        # Only a stream stopped early: cancelling one that ran to its end can race the task's
        # completion in Ray 2.60's core worker and abort this process (task_manager.cc "Tried to
        # complete task that was not pending").
        if not finished:
            ray.cancel(stream)
