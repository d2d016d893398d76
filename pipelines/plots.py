"""Figures of the report (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Sequence

from pipelines.run_store.files import RunFiles, write_atomic

Target = Path | Callable[[bytes], None]  # a PNG's path, or a function that stores its bytes


def stored_as(files: RunFiles, name: str) -> Callable[[bytes], None]:
    """The target of a figure that goes into a run directory (local or on a store) as ``name``."""
    return lambda png: files.write_text(name, png)


def plot_layer_losses(losses: Sequence[float], small: int, large: int, title: str,
                      path: Target) -> None:
    """Loss of the depth-l model against l, with the L3Prune picks marked (paper, Figure 1).

    ``path``: where the PNG goes, or a function that stores its bytes (a run store's file)."""
    plt = _pyplot()

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


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Target) -> None:
    """Grid, legend, layout; then write the PNG atomically (to ``path``, or through it when it
    is a function taking the bytes) and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    if callable(path):
        path(buffer.getvalue())
    else:
        write_atomic(path, buffer.getvalue())


def plot_training_loss(steps: Sequence[int], losses: Sequence[float], title: str, path: Target,
                       ylabel: str = "InfoNCE loss") -> None:
    """Training loss per step, with a running mean over 1/20 of the run."""
    plt = _pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, linewidth=0.8, color="#729fcf", label="loss (global batch)")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, linewidth=1.8, color="#204a87",
                label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _finish(fig, ax, path)


def plot_accuracy_vs_layers(series: dict[str, list[tuple[int, float]]], zero_shot: dict[str, float],
                            total_layers: int, title: str, path: Target) -> None:
    """Test accuracy of the prompt-tuned model cut to l layers against l, one line per dataset,
    with the unpruned model's zero-shot accuracy (same prompt) as a dashed reference line (the
    main figure of "Why Lift so Heavy?")."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (dataset, points) in enumerate(series.items()):
        color = colors[index % len(colors)]
        points = sorted(points)
        ax.plot([layers for layers, _ in points], [acc for _, acc in points], marker="o",
                color=color, linewidth=1.5, label=f"{dataset}: prompt-tuned")
        best = max(points, key=lambda p: (p[1], -p[0]))
        ax.plot([best[0]], [best[1]], marker="*", markersize=14, color=color)
        if dataset in zero_shot:
            ax.axhline(zero_shot[dataset], color=color, linestyle="--", linewidth=1,
                       label=f"{dataset}: zero-shot, all {total_layers} layers")
    ax.set_xlabel("layers kept")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.set_xlim(0.5, total_layers + 0.5)
    _finish(fig, ax, path)


def plot_score_vs_parameters(series: dict[str, tuple[list[tuple[float, float, int]], list[int]]],
                             path: Target,
                             intervals: dict[str, list[list[float] | None]] | None = None,
                             untrained: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """MTEB mean against parameters, one colour per model, its Pareto front joined (paper,
    Figure 5). ``series``: model -> ([(parameters, score, layers kept)], front indices).
    ``intervals``: model -> per point its 95% interval [low, high] (or None), drawn as error bars
    (a subsampled evaluation). ``untrained``: model -> [(parameters, score)] of its depths with no
    fine-tuning, hollow markers of the model's colour (the gap to the filled one is training's)."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for index, (model, (points, front)) in enumerate(series.items()):
        color = colors[index % len(colors)]
        ax.scatter([p / 1e6 for p, _, _ in points], [s for _, s, _ in points], color=color,
                   alpha=0.6, label=model)
        baseline = (untrained or {}).get(model)
        if baseline:
            ax.scatter([p / 1e6 for p, _ in baseline], [s for _, s in baseline], facecolors="none",
                       edgecolors=color, linewidths=1.2, label=f"{model}: untrained")
        bars = [(p, s, iv) for (p, s, _), iv in zip(points, (intervals or {}).get(model, [])) if iv]
        if bars:
            ax.errorbar([p / 1e6 for p, _, _ in bars], [s for _, s, _ in bars],
                        yerr=[[s - iv[0] for _, s, iv in bars], [iv[1] - s for _, s, iv in bars]],
                        fmt="none", ecolor=color, elinewidth=1, capsize=3, alpha=0.8,
                        label=None if drawn else "95% bootstrap interval")
            drawn = True
        for parameters, score, layers in points:
            ax.annotate(str(layers), (parameters / 1e6, score), textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color=color)
        ax.plot([points[k][0] / 1e6 for k in front], [points[k][1] for k in front], color=color,
                linewidth=1.5, linestyle="-", marker="D", markersize=4, label=f"{model}: Pareto front")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("MTEB mean main score")
    ax.set_title("score against size (labels: layers kept)")
    _finish(fig, ax, path)


def plot_training_curves(curves: dict[str, list[tuple[int, list[int], list[float]]]], path: Target,
                         ylabel: str = "InfoNCE loss") -> None:
    """Training loss per step of every depth, one panel per model (or model and dataset)."""
    plt = _pyplot()

    models = list(curves) or ["no finished trial"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), dpi=120, squeeze=False)
    for ax, model in zip(axes[0], models):
        cmap = plt.get_cmap("viridis")
        runs = sorted(curves.get(model, []))
        for index, (layers, steps, losses) in enumerate(runs):
            ax.plot(steps, losses, linewidth=1.2, color=cmap(index / max(1, len(runs) - 1)),
                    label=f"{layers} layers")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(model)
        if not runs:
            ax.text(0.5, 0.5, "no training log", ha="center", transform=ax.transAxes)
    for ax in axes[0][:-1]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _finish(fig, axes[0][-1], path)
