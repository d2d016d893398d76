"""What an artifact of the classification route is, in the words of a stage that scores another
route's artifacts and refuses this one (pipelines/routes/artifacts.py). Imports nothing: the
stages read it, and this route's other modules import those stages."""

KIND = "a prompt-based classifier (classification objective)"
SCORED_BY = "score it with `layercut evaluate-classifier`"
