"""Prompt-based classification with a causal LM: a template, verbalizers, and their scores.

An input is rendered as ``template`` with ``{text}`` replaced by the text ("Review: {text}
Sentiment:") and the model scores each class by the probability of its verbalizer words as the
continuation. A word of several tokens scores the product of its tokens' probabilities (teacher
forced: word token k is predicted after the prompt and tokens 1..k-1); a class with several words
scores the sum of their probabilities. Prediction is the class with the highest score.

Inputs are LEFT padded, so every prompt ends at the last position: a word of m tokens is then
predicted at the last m positions of its sequence whatever the prompt lengths, and the LM head
runs on those positions only (``logits_to_keep``), never on the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.errors import LayercutError
from tasks.model.encoder import position_ids_for

TEXT_SLOT = "{text}"


@dataclass(frozen=True)
class ClassificationPrompt:
    template: str  # holds {text} exactly once
    label_names: tuple[str, ...]  # class index -> name
    verbalizers: tuple[tuple[str, ...], ...]  # class index -> its label words
    max_length: int = 256  # prompt tokens; the text is cut to fit, the template never

    def __post_init__(self):
        check_prompt(self.template, self.label_names, self.verbalizers)

    @classmethod
    def from_mapping(cls, template: str, label_names: list[str], verbalizers: dict[str, list[str]],
                     max_length: int = 256) -> "ClassificationPrompt":
        """From a config's {label name: [words]}; every label needs words, and only labels may
        have them."""
        unknown = [name for name in verbalizers if name not in label_names]
        if unknown:
            raise LayercutError(f"verbalizers name labels {unknown} that are not in the label "
                                f"list {list(label_names)}")
        missing = [name for name in label_names if not verbalizers.get(name)]
        if missing:
            raise LayercutError(f"labels {missing} have no verbalizer word; give each label at "
                                "least one (classification.verbalizers)")
        return cls(template, tuple(label_names),
                   tuple(tuple(verbalizers[name]) for name in label_names), max_length)


def check_prompt(template: str, label_names, verbalizers) -> None:
    if template.count(TEXT_SLOT) != 1:
        raise LayercutError(f"the template must hold the {TEXT_SLOT} slot exactly once: {template!r}")
    if len(label_names) < 2:
        raise LayercutError(f"a classification needs at least two labels, got {list(label_names)}")
    if len(set(label_names)) != len(label_names):
        raise LayercutError(f"label names repeat: {list(label_names)}")
    if len(verbalizers) != len(label_names):
        raise LayercutError(f"{len(label_names)} labels but {len(verbalizers)} verbalizer lists")
    for name, words in zip(label_names, verbalizers):
        if not words or any(not isinstance(w, str) or not w.strip() for w in words):
            raise LayercutError(f"label {name!r} has no verbalizer word (or an empty one)")
    seen: dict[str, str] = {}
    for name, words in zip(label_names, verbalizers):
        for word in words:
            if word in seen and seen[word] != name:
                raise LayercutError(f"verbalizer word {word!r} is given for both {seen[word]!r} "
                                    f"and {name!r}")
            seen[word] = name


class VerbalizerScorer:
    """Turns texts into model inputs and the model's logits into per-class log-probabilities."""

    def __init__(self, tokenizer, prompt: ClassificationPrompt):
        self.tokenizer = tokenizer
        self.prompt = prompt
        before, after = prompt.template.split(TEXT_SLOT)
        encode = lambda piece: tokenizer(piece, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.leading = _leading_special_tokens(tokenizer)
        self.before, self.after = encode(before), encode(after) if after else []
        # A label word follows the template's last character; BPE vocabularies spell a word
        # after a non-space with a leading space ("Sentiment: positive").
        space = "" if prompt.template[-1:].isspace() else " "
        self.words: list[tuple[int, ...]] = []
        self.word_class: list[int] = []
        for label, words in enumerate(prompt.verbalizers):
            for word in words:
                ids = tuple(encode(space + word.strip()))
                if not ids:
                    raise LayercutError(f"verbalizer word {word!r} encodes to no token")
                if ids in self.words:
                    raise LayercutError(f"verbalizer words {word!r} and another encode to the "
                                        "same tokens")
                self.words.append(ids)
                self.word_class.append(label)
        self.longest_word = max(len(w) for w in self.words)
        self.multi = [j for j, w in enumerate(self.words) if len(w) > 1]
        fixed = len(self.leading) + len(self.before) + len(self.after) + self.longest_word - 1
        self.text_budget = prompt.max_length - fixed
        if self.text_budget < 1:
            raise LayercutError(f"max_length {prompt.max_length} leaves no room for the text "
                                f"(the template and longest label word take {fixed} tokens)")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    @property
    def num_classes(self) -> int:
        return len(self.prompt.label_names)

    def prompt_ids(self, text: str) -> list[int]:
        """[special tokens] + template before the slot + the text (cut to fit) + after it."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:self.text_budget]
        return [*self.leading, *self.before, *ids, *self.after]

    def sequences(self, texts: list[str]) -> list[list[int]]:
        """Per text: the prompt, then the prompt followed by all but the last token of each
        multi-token word (its first tokens are the context its later tokens are predicted in)."""
        out = []
        for text in texts:
            ids = self.prompt_ids(text)
            out.append(ids)
            out += [ids + list(self.words[j][:-1]) for j in self.multi]
        return out

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        sequences = self.sequences(texts)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # left padding: every sequence ends at width - 1
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def logits(self, model, features: dict[str, torch.Tensor], device) -> torch.Tensor:
        """(sequences, longest word, vocab) logits at the last positions only."""
        attention_mask = features["attention_mask"].to(device)
        return model(input_ids=features["input_ids"].to(device), attention_mask=attention_mask,
                     position_ids=position_ids_for(attention_mask), use_cache=False,
                     logits_to_keep=self.longest_word).logits

    def word_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(texts, words) log P(word | prompt) from ``logits`` of ``features``'s sequences."""
        per_text = 1 + len(self.multi)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (S, M, V)
        texts = log_probs.shape[0] // per_text
        columns = []
        for j, word in enumerate(self.words):
            m = len(word)
            offset = 0 if m == 1 else 1 + self.multi.index(j)
            rows = log_probs[offset::per_text]  # (texts, M, V): this word's sequence per text
            targets = torch.tensor(word, device=logits.device)
            picked = rows[:, rows.shape[1] - m:, :].gather(
                2, targets.view(1, m, 1).expand(texts, m, 1)).squeeze(2)
            columns.append(picked.sum(dim=1))
        return torch.stack(columns, dim=1)

    def class_log_probs(self, word_log_probs: torch.Tensor) -> torch.Tensor:
        """(texts, classes): log of the summed probability of each class's words."""
        index = torch.tensor(self.word_class, device=word_log_probs.device)
        return torch.stack([torch.logsumexp(word_log_probs[:, index == c], dim=1)
                            for c in range(self.num_classes)], dim=1)

    def score_with_tokens(self, model, texts: list[str], device) -> tuple[torch.Tensor, int]:
        """((texts, classes) class log-probabilities under ``model``, non-padding tokens run)."""
        features = self.features(texts)
        scores = self.class_log_probs(self.word_log_probs(self.logits(model, features, device)))
        return scores, int(features["attention_mask"].sum())

    def score(self, model, texts: list[str], device) -> torch.Tensor:
        """(texts, classes) class log-probabilities under ``model``."""
        return self.score_with_tokens(model, texts, device)[0]


def classification_loss(class_log_probs: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean loss over the batch.

    ``classes``: cross-entropy over the classes' scores (the vocabulary restricted to the label
    words, as in prompt-based fine-tuning à la LM-BFF). ``vocabulary``: the negative
    log-probability of the gold label's words under the full next-token distribution.
    """
    if mode == "classes":
        return torch.nn.functional.cross_entropy(class_log_probs, labels)
    if mode == "vocabulary":
        return -class_log_probs.gather(1, labels.view(-1, 1)).mean()
    raise LayercutError(f"unknown classification loss {mode!r}: use classes or vocabulary")


def _leading_special_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama's and OPT's BOS; none for
    GPT-2), so a prompt starts as the model saw text in pre-training."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []
