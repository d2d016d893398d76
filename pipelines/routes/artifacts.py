"""Which route an artifact was trained on, and the one line a stage refuses another route's
artifact with (stage 3 scores the contrastive route's, `layercut evaluate-classifier` the
classification route's).

Each route says what its artifacts are in its own ``artifact.py`` (what it is, the command that
scores it). This module and those import no stage, so the stages can ask here while the routes'
other modules import the stages (pipelines/routes/registry.py cannot be imported by a stage).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pipelines.route_names import CLASSIFICATION, CONTRASTIVE, ROUTE_NAMES
from pipelines.routes.classification import artifact as classification
from pipelines.routes.contrastive import artifact as contrastive
from tasks.errors import LayercutError

ARTIFACTS: dict[str, ModuleType] = {CONTRASTIVE: contrastive, CLASSIFICATION: classification}

if tuple(ARTIFACTS) != ROUTE_NAMES:
    raise ImportError(f"pipelines/routes/artifacts.py describes the artifacts of {tuple(ARTIFACTS)}, "
                      f"not of every route in pipelines/route_names.py {ROUTE_NAMES}")


def artifact_route(artifact: dict[str, Any]) -> str:
    """The route an artifact's layercut.json says it was trained on; an artifact from before
    the classification route records no objective: contrastive."""
    return artifact.get("objective", CONTRASTIVE)


def refuse_other_routes(name: str, artifact: dict[str, Any] | None, route: str) -> None:
    """Refuse (LayercutError, one line naming the command that scores it) an artifact trained on
    another route than ``route``, the one the calling stage scores; ``artifact``: its
    layercut.json (None: not an artifact, e.g. a base model)."""
    if artifact is None:
        return
    trained = artifact_route(artifact)
    if trained == route:
        return
    other = ARTIFACTS.get(trained)
    if other is None:
        raise LayercutError(f"{name} was trained with objective {trained!r}, which this version of "
                            f"layercut does not know")
    raise LayercutError(f"{name} is {other.KIND}; {other.SCORED_BY}")
