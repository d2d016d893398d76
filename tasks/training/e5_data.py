"""The public E5 training mix, as the echo-embeddings release lays it out: its instruction table.

The layout (``data.layout: e5``): a folder holding one ``<source>.jsonl`` per source dataset
(``allnli.jsonl``, ``msmarco_passage.jsonl``, ...), every line a JSON object with the fields
``query``, ``positive`` and ``negative``. The rows carry no instruction: each source has its own
task instruction, prepended to the QUERY only (``<instruction>; <query>``, the formatter's
instruction separator, as evaluation prepends its task instructions); positives and negatives
get none. ``allnli`` and ``quora_duplicates`` alternate between two instructions by row: the
row on line i (1-based) of its file gets the first for odd i, the second for even i (the
official code's ``i % 2`` on the 0-based row index). Lines are counted in the file, so a bad
line that is skipped does not shift the instructions of the rows after it.

Facts from the official code, read, not copied: ``E5_EMBEDDING_PROMPTS`` and ``E5Data.load_data``
in McGill-NLP/llm2vec ``llm2vec/dataset/E5Data.py`` (the version with 14 sources where allnli
and quora_duplicates hold two instructions each), the module the official L3Prune code adapts
(thennal10/l3prune ``train.py`` loads its E5 data through ``l3prune.dataset.utils.load_dataset``).
The data itself: the echo-embeddings release of the E5 public mix (README, "Training data").
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import LayercutError

# Source (file name without .jsonl) -> its instruction, or the two it alternates between.
E5_INSTRUCTIONS: dict[str, str | tuple[str, str]] = {
    "allnli": ("Given a premise, retrieve a hypothesis that is entailed by the premise",
               "Retrieve semantically similar text"),
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "eli5_question_answer": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpot_qa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora_duplicates": ("Given a question, retrieve questions that are semantically equivalent to the given question",
                         "Find questions that have the same meaning as the input question"),
    "squad": "Retrieve Wikipedia passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
}


def e5_source(path: str) -> str:
    """The source a file of the E5 layout holds: its name without extensions."""
    return Path(path).name.split(".")[0]


def e5_instruction(source: str, line: int, path: str = "") -> str:
    """The instruction of the row on (1-based) ``line`` of ``source``'s file.

    Raises ``LayercutError`` naming the file when ``source`` is not one of the E5 sources.
    """
    instruction = E5_INSTRUCTIONS.get(source)
    if instruction is None:
        raise LayercutError(
            f"{path or source}: {source!r} is not a source of the E5 layout (data.layout: e5 "
            f"reads <source>.jsonl files; sources: {', '.join(E5_INSTRUCTIONS)})")
    if isinstance(instruction, str):
        return instruction
    return instruction[(line - 1) % 2]
