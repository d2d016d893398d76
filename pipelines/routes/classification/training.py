"""Stage 2 of the classification route: a cut causal LM, LM head kept, prompt-tuned to put its
next-token probability on the label words (tasks/training/objectives.py ``ClassificationObjective``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.routes.base import TrainingInputs

if TYPE_CHECKING:
    from pipelines.schemas.finetune import FinetuneConfig


class ClassificationTraining:
    """The classification objective's steps of pipelines/finetune.py (``TrainingRoute``)."""

    lm_head = True
    loss_label = "classification loss"

    def resolve(self, config: FinetuneConfig) -> FinetuneConfig:
        """The data root that --data-root set (on ``data``) also serves the classification data,
        unless that section names its own. The caller's config is left as it is."""
        task = config.classification
        if task.data_root is not None or config.data.data_root is None:
            return config
        return config.model_copy(update={
            "classification": task.model_copy(update={"data_root": config.data.data_root})})

    def name_suffix(self, config: FinetuneConfig) -> str:
        """The default run name's dataset part: finetune-<model>-<dataset>-l<layers>."""
        return f"-{config.classification.label()}"

    def wrapper(self, config: FinetuneConfig, tokenizer) -> None:
        """No wrapper: the prompt is checked against the tokenizer in ``inputs``."""
        return None

    def inputs(self, config: FinetuneConfig, tokenizer, wrapper: None) -> TrainingInputs:
        """The train split, its label names (the section's, else read from the data through Ray
        Data) and the prompt, checked against the tokenizer before any worker starts (a label
        word that encodes to nothing, a max_length that leaves no room for the text)."""
        from pipelines import resolve
        from tasks.classification.verbalizer import VerbalizerScorer
        from tasks.training.objectives import ClassificationObjective

        task = config.classification  # with the data root resolved (``resolve``)
        label_names = resolve.label_names(task)
        prompt = task.prompt(label_names)
        VerbalizerScorer(tokenizer, prompt)
        path, columns = task.split_path(task.train_split)
        settings = {"classification": [task.model_dump(
            exclude={"data_root", "test_split", "source", "local_source"}), label_names, path]}
        return TrainingInputs(ClassificationObjective(prompt, task.loss), path, columns, label_names, settings)

    def read(self, config: FinetuneConfig, inputs: TrainingInputs) -> tuple[Any, dict[str, Any]]:
        """The labeled rows as an annotated Ray Dataset, and the data report."""
        from tasks.training.classification_data import annotated_labeled

        return annotated_labeled(
            inputs.data_path, label_names=inputs.label_names, columns=inputs.columns,
            seed=config.training.seed, invalid_rows=config.classification.invalid_rows,
            source=config.classification.label())

    def artifact_fields(self, config: FinetuneConfig, inputs: TrainingInputs) -> dict[str, Any]:
        """What the artifact must carry to classify: template, labels, words
        (tasks.classification.verbalizer), written as a classifier (tasks/export/classifier.py)."""
        from tasks.export.classifier import CLASSIFIER

        objective = inputs.objective
        prompt = objective.prompt
        return {"classification": {
            "dataset": config.classification.label(), "template": prompt.template,
            "label_names": list(prompt.label_names),
            "verbalizers": [list(words) for words in prompt.verbalizers],
            "max_length": prompt.max_length, "loss": objective.loss}, "writer": CLASSIFIER}
