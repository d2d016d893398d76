"""Input formatting: wrap (instruction, text) with the tokenizer's chat template and tokenize.

The wrapper comes from the tokenizer's own chat template, never from matching model names, so any
instruct model works. The pooled span (``pool_mask``) is the text's own tokens, or with
``PromptConfig.pool_closing_tokens`` the text and the closing template tokens after it (the
official rule); the chat-template prefix, the instruction and padding are never pooled.
Sequences are left-padded. ``PromptFormatter`` is the one place this rule lives: stage 1,
training and evaluation all take their masks from it.

An empty (or whitespace-only) text still gets an embedding: with no token to pool (no text
token, and no closing token pooled), the pool mask holds the last token before where the text
would start (the end of the chat-template prefix,
or of the instruction and separator). This is the same rule for evaluation, stage 1 and stage 2,
and the exported sentence-transformers modules (``tasks.export.st_modules``) apply it too.

Inputs never depend on the calendar: templates that write today's date into a system turn
(Llama 3.1/3.2 through ``strftime_now``) render with the fixed date ``FIXED_DATE``. A wrapper can
also be given as recorded (``PromptConfig.prefix``/``suffix``, as an artifact stores it), and is
then used as it is, without rendering the template again.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from tasks.errors import LayercutError

if TYPE_CHECKING:  # torch where texts become tensors: config sections import PromptConfig
    import torch

# Private-use characters: never part of real content.
_SLOT = "\uE000LAYERCUT-TEXT\uE001"
_FIRST, _REPLY, _BOS = "\uE000FIRST\uE001", "\uE000REPLY\uE001", "\uE000BOS\uE001"
_SYSTEM = "\uE000SYSTEM\uE001"
# The date every template sees (Llama 3.1's own default when no clock is given to it).
FIXED_DATE = datetime(2024, 7, 26)
_CLOCK_LOCK = threading.Lock()


class _FixedClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE if tz is None else FIXED_DATE.replace(tzinfo=tz)


@contextmanager
def fixed_template_clock():
    """Chat templates rendered inside see ``FIXED_DATE`` as today.

    transformers' ``strftime_now`` reads ``datetime.now()`` of its own module; a render keyword
    cannot replace the function (transformers turns keyword values into plain data), so that
    name points at a fixed clock while we render, a few times per formatter. The test with two
    different todays (tests/test_chat_template_cases.py) fails if transformers reads time
    another way.
    """
    from transformers.utils import chat_template_utils as utils

    with _CLOCK_LOCK:
        saved = getattr(utils, "datetime", datetime)
        utils.datetime = _FixedClock
        try:
            yield
        finally:
            utils.datetime = saved


@dataclass(frozen=True)
class PromptConfig:
    use_chat_template: bool = True  # False: raw text with the tokenizer's own special tokens
    # None: no system turn, as the paper's wrappers (a template's default one is dropped).
    system_prompt: str | None = None
    instruction_separator: str = "; "  # between instruction and text, as in LLM2Vec's E5 data
    max_length: int = 512
    # Which tokens are pooled: the text only (False), or the text and the closing chat-template
    # tokens after it (True: ``<|eot_id|>``, `` [/INST]``, ``<|im_end|>``...), as the official
    # L3Prune / LLM2Vec code does (its mask is counted from the end of the wrapped string, so
    # under weighted_mean the closing tokens get the largest weights).
    pool_closing_tokens: bool = False
    # A recorded wrapper (an artifact's): used as is instead of rendering the chat template.
    prefix: str | None = None
    suffix: str | None = None


class PromptFormatter:
    """Turns texts (and optional instructions) into left-padded model inputs plus a pool mask."""

    def __init__(self, tokenizer, config: PromptConfig = PromptConfig()):
        self.tokenizer = tokenizer
        self.config = config
        self.prefix, self.suffix = self._wrapper()
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def recorded(self) -> PromptConfig:
        """This formatter's config with the wrapper it rendered: what an artifact records."""
        return replace(self.config, prefix=self.prefix, suffix=self.suffix)

    def _template_name(self) -> str:
        return f"the chat template of {getattr(self.tokenizer, 'name_or_path', '') or 'the tokenizer'}"

    def _render(self, messages: list[dict[str, str]], **kwargs) -> str:
        try:
            with fixed_template_clock():
                return self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - templates raise arbitrary errors
            raise LayercutError(f"the chat template rejects this prompt setup: {exc}") from exc

    def _wrapper(self) -> tuple[str, str]:
        """(prefix, suffix) around the user message: as recorded, or from the chat template."""
        if self.config.prefix is not None:
            return self.config.prefix, self.config.suffix or ""
        if not self.config.use_chat_template:
            if self.config.system_prompt is not None:
                raise LayercutError("encoder.system_prompt needs the chat template (there is no "
                                    "system turn without it); unset it or set "
                                    "encoder.use_chat_template: true")
            return "", ""
        if not getattr(self.tokenizer, "chat_template", None):
            raise LayercutError(
                "the tokenizer has no chat template; set encoder.use_chat_template: false")
        messages = [{"role": "user", "content": _SLOT}]
        if self.config.system_prompt is not None:
            self._check_system_turn()
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        rendered = self._render(messages)
        if rendered.count(_SLOT) != 1:
            raise LayercutError("the chat template does not place the user message exactly once")
        prefix, suffix = rendered.split(_SLOT)
        if self.config.system_prompt is None:
            prefix = self._drop_default_system_turn(prefix, suffix)
        return prefix, suffix

    def _check_system_turn(self) -> None:
        """A template that drops the system message (early Phi-3 releases rendered only user and
        assistant turns) would silently ignore encoder.system_prompt: refuse it."""
        probe = self._render([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _SLOT}])
        if _SYSTEM not in probe:
            raise LayercutError(
                f"{self._template_name()} drops the system turn, so encoder.system_prompt "
                f"({self.config.system_prompt!r}) would never reach the model; unset it or use "
                "a tokenizer whose template renders system messages")

    def _drop_default_system_turn(self, prefix: str, suffix: str) -> str:
        """``prefix`` without a system turn the template inserts by itself (Qwen2, SmolLM2).

        The paper's wrappers are bare user turns. A user turn later in a conversation shows the
        template's user prefix alone: what follows the previous turn's closing (= ``suffix``).
        Unrecognised templates keep their prefix unchanged.
        """
        try:
            later = self._render([{"role": "user", "content": _FIRST}, {"role": "assistant", "content": _REPLY},
                                  {"role": "user", "content": _SLOT}])
            with_marked_bos = self._render([{"role": "user", "content": _SLOT}], bos_token=_BOS)
        except LayercutError:
            return prefix
        if _REPLY not in later or later.count(_SLOT) != 1:
            return prefix
        between = later[later.index(_REPLY) + len(_REPLY):later.index(_SLOT)]
        lead = (self.tokenizer.bos_token or "") if with_marked_bos.startswith(_BOS) else ""
        core = prefix[len(lead):]
        if between.endswith(core):  # the single turn has no system turn of its own
            return prefix
        if suffix and between.startswith(suffix) and core.endswith(between[len(suffix):]):
            return lead + between[len(suffix):]
        return prefix

    def render(self, text: str, instruction: str | None = None) -> tuple[str, int, int]:
        """The full model input string and the character span of ``text`` inside it (the closing
        template runs from the span's end to the end of the string)."""
        # Stripped, as the paper's code does (and as templates that `trim` content render it).
        text = text.strip()
        lead = f"{instruction.strip()}{self.config.instruction_separator}" if instruction else ""
        start = len(self.prefix) + len(lead)
        return f"{self.prefix}{lead}{text}{self.suffix}", start, start + len(text)

    def __call__(self, texts: Sequence[str], instructions: Sequence[str | None] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``pool_mask``, each (B, S).

        Raises ``LayercutError`` naming the text when its prompt leaves no room within max_length,
        or when an empty text has no prompt token at all to stand for it.
        """
        if instructions is None:
            instructions = [None] * len(texts)
        rendered = [self.render(t, i) for t, i in zip(texts, instructions)]
        encoded = self.tokenizer(
            [r[0] for r in rendered],
            add_special_tokens=not self.config.use_chat_template,  # the template has its own
            return_offsets_mapping=True,
        )
        rows = []
        for k, (ids, offsets, (full, start, end)) in enumerate(
                zip(encoded["input_ids"], encoded["offset_mapping"], rendered)):
            try:
                rows.append(self._truncate(ids, offsets, start, end, len(full)))
            except LayercutError as exc:
                raise LayercutError(f"text {k} of the batch ({texts[k][:40]!r}): {exc}") from None
        import torch

        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        pool_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (ids, text_mask) in enumerate(rows):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
            pool_mask[row, width - len(ids):] = torch.tensor(text_mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pool_mask": pool_mask}

    def _truncate(self, ids: list[int], offsets, start: int, end: int,
                  full_end: int) -> tuple[list[int], list[bool]]:
        # A token belongs to the text when its character span overlaps the text's span.
        text_mask = [s < end and e > start and e > s for s, e in offsets]
        excess = len(ids) - self.config.max_length
        if excess > 0:
            # Drop text tokens from the end of the text; keep the template around it intact.
            text_positions = [i for i, m in enumerate(text_mask) if m]
            if excess >= len(text_positions):
                raise LayercutError(
                    f"max_length {self.config.max_length} leaves no room for text after the "
                    f"{len(ids) - len(text_positions)} prompt tokens")
            drop = set(text_positions[-excess:])
            ids = [t for i, t in enumerate(ids) if i not in drop]
            offsets = [o for i, o in enumerate(offsets) if i not in drop]
            text_mask = [m for i, m in enumerate(text_mask) if i not in drop]
        pooled = pooled_span_mask(offsets, start, full_end if self.config.pool_closing_tokens else end)
        if not any(pooled):
            pooled = empty_text_mask(offsets, start)
        return ids, pooled

    def closing_tokens(self) -> int:
        """Tokens the closing template (``suffix``) takes after a text: what max_length reserves
        for it beyond the prompt and the text (the exported artifact's ``max_seq_length`` is
        ``max_length`` minus this, so both keep the same text tokens)."""
        full, start, end = self.render("x")
        encoded = self.tokenizer(full, add_special_tokens=not self.config.use_chat_template,
                                 return_offsets_mapping=True)
        # Only tokens of the rendered suffix; special tokens the tokenizer adds itself (an EOS,
        # offsets (0, 0)) are added within the limit by sentence-transformers too.
        return sum(1 for s, e in encoded["offset_mapping"] if s >= end and e > s)


def pooled_span_mask(offsets, start: int, span_end: int) -> list[bool]:
    """The tokens whose character span overlaps ``[start, span_end)``: the text's tokens (a token
    that merges the separator's space into the text's first word is a text token), and with
    ``span_end`` at the end of the rendered string the closing template tokens after them.
    Tokens the tokenizer adds itself (offsets (0, 0)) are never pooled."""
    return [s < span_end and e > start and e > s for s, e in offsets]


def empty_text_mask(offsets, start: int) -> list[bool]:
    """The pool mask of an empty text: the last token before the first token that reaches past
    ``start`` (the prompt's last token; the closing template is not part of it).

    Raises ``LayercutError`` when there is no such token (no chat template, no instruction and a
    tokenizer that adds no BOS: an empty text is then no input at all).
    """
    prompt_tokens = next((i for i, (s, e) in enumerate(offsets) if e > start and e > s), len(offsets))
    if prompt_tokens == 0:
        raise LayercutError("the text is empty and has no prompt token to stand for it "
                            "(set encoder.use_chat_template: true, or give an instruction)")
    return [i == prompt_tokens - 1 for i in range(len(offsets))]
