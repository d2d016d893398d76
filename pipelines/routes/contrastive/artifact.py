"""What an artifact of the contrastive route is, in the words of a stage that scores another
route's artifacts and refuses this one (pipelines/routes/artifacts.py). Imports nothing: the
stages read it, and this route's other modules import those stages."""

KIND = "an embedding model (contrastive objective)"
SCORED_BY = "evaluate it with `layercut evaluate` (mteb)"
