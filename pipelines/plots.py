"""Figures of the report (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from pipelines.outputs import write_atomic


def plot_layer_losses(losses: Sequence[float], small: int, large: int, title: str, path: Path) -> None:
    """Loss of the depth-l model against l, with the L3Prune picks marked (paper, Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(1, len(losses) + 1))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(layers, losses, marker="o", markersize=3, linewidth=1.5, color="#3465a4",
            label="initial contrastive loss")
    ax.axvspan(0.5, len(losses) // 2 + 0.5, color="#eeeeec", zorder=0, label="small half (1..L/2)")
    for depth, name, color in ((small, "small", "#cc0000"), (large, "large", "#4e9a06")):
        ax.axvline(depth, color=color, linestyle="--", linewidth=1)
        ax.plot([depth], [losses[depth - 1]], marker="*", markersize=14, color=color,
                label=f"L3Prune {name}: {depth} layers")
    ax.set_xlabel("layers kept (l)")
    ax.set_ylabel("InfoNCE loss of the depth-l model")
    ax.set_title(title)
    ax.set_xlim(0.5, len(losses) + 0.5)
    _finish(fig, ax, path)


def _finish(fig, ax, path: Path) -> None:
    """Grid, legend, layout; then write the PNG atomically and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def plot_training_loss(steps: Sequence[int], losses: Sequence[float], title: str, path: Path) -> None:
    """Training loss per step, with a running mean over 1/20 of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, linewidth=0.8, color="#729fcf", label="loss (global batch)")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, linewidth=1.8, color="#204a87",
                label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(title)
    _finish(fig, ax, path)
