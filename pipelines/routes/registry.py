"""The registry of the sweep's routes, by name (a model entry's ``objectives`` item, stage 2's
``objective``). The order is the report's (sections, summary.json keys) and the order routes
prepare in: the contrastive route's stage 1 first (it sets the layer count the classification
route then reuses).
"""

from __future__ import annotations

from pipelines.routes.classification.route import ROUTE as CLASSIFICATION
from pipelines.routes.contrastive.route import ROUTE as CONTRASTIVE
from pipelines.routes.base import Route

ROUTES: dict[str, Route] = {route.name: route for route in (CONTRASTIVE, CLASSIFICATION)}


def routes_of(plan) -> list[Route]:
    """The routes a model plan runs (``pipelines.sweep_plan.ModelPlan``), in ``ROUTES`` order."""
    return [route for route in ROUTES.values() if route.active(plan)]
