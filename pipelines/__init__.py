"""layercut's job entry points (one per stage, plus the whole pipeline) and their configs."""
