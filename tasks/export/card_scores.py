"""The scores an artifact was measured at, in its model card (README.md).

Stage 3's results go into the card twice: a section a reader sees (task, type, main score,
splits and subsets scored, and a mark where the task's texts occur in the training data), and
the Hub's ``model-index`` metadata, built with huggingface_hub's own ``ModelCardData`` and
``EvalResult`` (the format mteb's ``generate_model_card`` also writes through), so the Hub
lists the scores. Writing again replaces both: the card always shows the latest evaluation of
this model, never a stale one beside it.
"""

from __future__ import annotations

from typing import Any

SECTION = "## Evaluation (MTEB)"


def _eval_results(rows: list[dict[str, Any]]):
    from huggingface_hub import EvalResult

    return [EvalResult(task_type=row["type"], dataset_type=f"mteb/{row['task']}",
                       dataset_name=f"MTEB {row['task']}", dataset_split=",".join(row["splits"]),
                       dataset_config=",".join(row["subsets"]), metric_type="main_score",
                       metric_value=round(float(row["main_score"]), 6))
            for row in rows]


def scores_section(rows: list[dict[str, Any]], overlap: dict[str, dict[str, int]],
                   probes: dict[str, float]) -> str:
    """The card's evaluation section (markdown). ``rows``: stage 3's summary rows (task, type,
    main_score, splits, subsets); ``overlap``: per task {"texts", "overlapping"} (sweep's
    training_overlap); ``probes``: the logistic-regression probes' accuracies, outside the mean."""
    lines = [SECTION, "",
             "Scored by `layercut evaluate` (mteb 2) with each task's instruction from this "
             "directory's prompts; `mteb.evaluate(SentenceTransformer(dir), task)` reproduces them.", "",
             "| task | type | main score | splits | subsets |", "|---|---|---|---|---|"]
    marked = []
    for row in rows:
        counts = overlap.get(row["task"], {})
        mark = " *" if counts.get("overlapping") else ""
        if mark:
            marked.append(f"{row['task']}: {counts['overlapping']} of {counts['texts']} evaluated texts")
        lines.append(f"| {row['task']}{mark} | {row['type']} | {row['main_score']:.4f} | "
                     f"{', '.join(row['splits'])} | {', '.join(row['subsets'])} |")
    mean = sum(row["main_score"] for row in rows) / len(rows)
    lines += ["", f"Mean main score over {len(rows)} tasks: {mean:.4f}."]
    if marked:
        lines += ["", "\\* Train/test overlap: these tasks' texts occur in the training data, so "
                  "their scores overstate the model: " + "; ".join(marked) + "."]
    if probes:
        lines += ["", "Logistic-regression probes (accuracy, not in the mean): "
                  + ", ".join(f"{name} {score:.4f}" for name, score in sorted(probes.items())) + "."]
    return "\n".join(lines) + "\n"


def card_with_scores(card_text: str, model_name: str, rows: list[dict[str, Any]],
                     overlap: dict[str, dict[str, int]] | None = None,
                     probes: dict[str, float] | None = None) -> str:
    """``card_text`` (a README.md with front matter) with ``rows`` in it: the evaluation section
    (replacing an earlier one) and the ``model-index`` metadata under ``model_name``.

    Raises:
        ValueError: ``rows`` is empty.
    """
    from huggingface_hub import ModelCard

    if not rows:
        raise ValueError("no evaluation rows to put in the model card")
    card = ModelCard(card_text)
    card.data.model_name = model_name
    card.data.eval_results = _eval_results(rows)
    body = card.text.split(SECTION)[0].rstrip() + "\n\n"
    card.text = body + scores_section(rows, overlap or {}, probes or {})
    return str(card)
