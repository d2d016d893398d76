"""The names of the sweep's routes, and nothing else: what a model entry's ``objectives`` and
stage 2's ``objective`` may name.

The schemas (pipelines/schemas/) validate against these names without importing the routes
(validating a config stays inert, and the schemas sit below the routes); the routes'
packages (pipelines/routes/<route>/) use the same names, and pipelines/routes/registry.py
refuses at import a registry that does not hold one route of each name, in this order.
"""

from __future__ import annotations

from typing import Literal

CONTRASTIVE = "contrastive"  # the embedding route (pipelines/routes/contrastive)
CLASSIFICATION = "classification"  # the prompt-based classification route (pipelines/routes/classification)

# Every route's name, in the registry's order (the report's).
ROUTE_NAMES = (CONTRASTIVE, CLASSIFICATION)

# The route of whatever names none: stage 2's default ``objective``, a model entry's default
# ``objectives``, a trial spec built without one. One name here, so no module outside the
# route packages has to pick a route itself.
DEFAULT_ROUTE = CONTRASTIVE

# A route's name as a config field's type: pydantic refuses any other value in one line
# ("Input should be 'contrastive' or 'classification'").
RouteName = Literal[ROUTE_NAMES]  # type: ignore[valid-type]
