"""The training triplets' fields and the other names datasets give them (the schema, without the
reader): config sections import these without importing Ray Data (tasks/training/data.py reads)."""

REQUIRED_FIELDS = ("query", "positive", "negative")
OPTIONAL_FIELDS = ("instruction", "source")
# Column names other datasets use for our fields (sentence-transformers/all-nli: anchor).
FIELD_ALIASES = {"query": ("query", "anchor"), "positive": ("positive", "pos"),
                 "negative": ("negative", "neg"), "instruction": ("instruction",),
                 "source": ("source",)}
