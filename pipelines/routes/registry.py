"""The registry of the sweep's routes, by name (a model entry's ``objectives`` item, stage 2's
``objective``). The order is the report's (sections, summary.json keys) and the order routes
prepare in: the contrastive route's stage 1 first (it sets the layer count the classification
route then reuses). The names are pipelines/route_names.py's, which the schemas validate with.
"""

from __future__ import annotations

from pipelines.route_names import ROUTE_NAMES
from pipelines.routes.classification.route import ROUTE as CLASSIFICATION
from pipelines.routes.contrastive.route import ROUTE as CONTRASTIVE
from pipelines.routes.base import Route

ROUTES: dict[str, Route] = {route.name: route for route in (CONTRASTIVE, CLASSIFICATION)}

if tuple(ROUTES) != ROUTE_NAMES:  # a config could name a route that is not registered, or not one that is
    raise ImportError(f"the registered routes {tuple(ROUTES)} are not pipelines/route_names.py's "
                      f"ROUTE_NAMES {ROUTE_NAMES}: add the route's name there, in the same order")


def routes_of(plan) -> list[Route]:
    """The routes a model plan runs (``pipelines.sweep_plan.ModelPlan``), in ``ROUTES`` order."""
    return [route for route in ROUTES.values() if route.active(plan)]
