"""Resource admission of the sweep: before any work, refuse a trial no node of the cluster can
ever run (without an autoscaler to add one), and say how many trials can train at once."""

from __future__ import annotations

from pipelines.ray_runtime import plan_workers
from pipelines.routes.registry import routes_of
from pipelines.schemas.sweep import TuneSection
from pipelines.sweep_plan import ModelPlan
from tasks.errors import LayercutError


def _worker_demand(workers) -> tuple[int, dict[str, float]]:
    """(worker count, one worker's bundle) of a stage's worker section, on this cluster."""
    plan = plan_workers(workers, jobs=10**9)
    return plan.count, {"CPU": plan.cpus, **({"GPU": 1.0} if plan.use_gpu else {})}


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(key, 0) >= amount for key, amount in bundle.items() if amount)


def _largest(nodes: list[dict[str, float]], need: dict[str, float]) -> dict[str, float]:
    best = max(nodes, key=lambda node: tuple(node.get(key, 0) for key in need), default={})
    return {key: best.get(key, 0) for key in need}


def check_resources(plans: list[ModelPlan], tune: TuneSection) -> int | None:
    """Refuse trials no node can ever run (no autoscaler to add one); returns how many trials
    can train at once (None: no limit, the autoscaler adds nodes as trials wait).

    Every stage of a trial is checked: stage 2 and each route's own (stage 1, stage 3); the
    number of trials at once is what stage 2's workers leave room for.

    Raises:
        LayercutError: naming the model, the stage, what it needs and what the cluster has.
    """
    import ray

    if tune.autoscaling:
        return tune.max_concurrent_trials if tune.max_concurrent_trials != "auto" else None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    concurrency = []
    for plan in plans:
        stages = [("finetune", plan.finetune.workers)]
        stages += [stage for route in routes_of(plan) for stage in route.stage_workers(plan)]
        for stage, workers in stages:
            count, bundle = _worker_demand(workers)
            need = {key: count * amount for key, amount in bundle.items()}
            if not any(_fits(bundle, node) for node in nodes) or not _fits(need, total):
                have = {key: total.get(key, 0) for key in need}
                raise LayercutError(
                    f"model {plan.label}: {stage} needs {count} worker(s) x {bundle}, but the "
                    f"cluster has {have} (largest node: {_largest(nodes, need)}) and no autoscaler "
                    "(tune.autoscaling: false): lower the workers or run on a bigger cluster")
            if stage == "finetune":
                concurrency.append(min(int(total.get(key, 0) // amount) for key, amount in need.items() if amount))
    if not _fits(tune.driver_resources, total):
        raise LayercutError(f"tune.driver_resources {tune.driver_resources} exceed the cluster's "
                            f"{ {key: total.get(key, 0) for key in tune.driver_resources} }")
    if tune.max_concurrent_trials != "auto":
        return tune.max_concurrent_trials
    return max(1, min(concurrency))
