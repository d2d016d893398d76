"""The classification route's artifact: a prompt-based classifier, the cut causal LM with its LM
head (``AutoModelForCausalLM``), its tokenizer with left padding (prompts end at the last
position, tasks/classification/verbalizer.py), ``layercut.json``'s ``classification`` (template,
label names, verbalizers) and the model card.

``CLASSIFIER`` is the ``ArtifactWriter`` (tasks/export/artifact.py) the route hands the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.export.card import cut_model_rows, front_matter, lora_line, public_base_model, public_data, title

if TYPE_CHECKING:
    from tasks.export.artifact import ArtifactInfo


def classifier_card(info: ArtifactInfo) -> str:
    training, task = info.training, info.classification
    words = "; ".join(f"{name}: {', '.join(w)}" for name, w in
                      zip(task["label_names"], task["verbalizers"]))
    base, hub_id, license_id = public_base_model(info.base_model)
    front = front_matter("transformers", "text-generation", hub_id, license_id,
                          "layercut, layer-pruning, prompt-based-fine-tuning, text-classification")
    return f"""{front}
# {title(info.base_model, hub_id)} cut to {info.layers} of {info.total_layers} layers, prompt-tuned classifier (layercut)

{info.selection.describe("decoder layers").capitalize()} of {base} with its LM head,
fine-tuned for prompt-based text classification as in "Why Lift so Heavy? Slimming Large
Language Models by Cutting Off the Layers" (Yuan et al., 2024).

| | |
|---|---|
{cut_model_rows(info, base, license_id)}
| template | `{task['template']}` |
| verbalizers | {words} |
| training | {info.steps_done} steps, lr {training['learning_rate']}, warmup {training['warmup_steps']}, batch {training['batch_size']} x {info.workers} workers, seed {training['seed']}; loss over {task['loss']}; final loss {info.final_loss if info.final_loss is None else round(info.final_loss, 4)} |
| LoRA | {lora_line(info)} |
| training data | {public_data(info.data)} |

## Use

Render the text into the template, then compare the next-token probabilities of the label words
(several tokens: the product of their probabilities; several words: the sum); the highest wins.
`layercut evaluate-classifier --model <dir>` does this and reports accuracy and macro-F1.
"""


class ClassifierWriter:
    """Writes the classifier's own files (``ArtifactWriter``); reads ``classification`` of the
    ``ArtifactInfo``."""

    name = "classification"

    def write(self, staging: Path, model, tokenizer, info: ArtifactInfo) -> dict[str, Any]:
        # Prompts end at the last position (tasks.classification.verbalizer).
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(staging)
        return {"classification": info.classification}

    def card(self, info: ArtifactInfo) -> str:
        return classifier_card(info)


CLASSIFIER = ClassifierWriter()
