"""SID tokenizers: item embeddings [N, D] -> hierarchical codes [N, L].

`build_sid_tokenizer("rqvae" | "rqkmeans", **kwargs)` makes one; `load_sid_tokenizer(dir)`
reads any saved one, dispatching on `tokenizer_type` in its config.json.
"""

from __future__ import annotations

import os

from sid.tokenizers.base import SIDTokenizer, check_sid_capacity, read_pretrained
from sid.tokenizers.rqkmeans import RQKMeans
from sid.tokenizers.rqvae import RQVAE

TOKENIZERS = {"rqvae": RQVAE, "rqkmeans": RQKMeans}


def build_sid_tokenizer(kind: str, **kwargs) -> SIDTokenizer:
    """A new, unfitted tokenizer of `kind` ("rqvae" | "rqkmeans") with keyword options."""
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown SID tokenizer kind {kind!r}; use one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind](**kwargs)


def load_sid_tokenizer(directory: str | os.PathLike) -> SIDTokenizer:
    """Load a tokenizer saved with save_pretrained, whatever its kind."""
    config, _ = read_pretrained(directory)
    kind = config["tokenizer_type"]
    if kind not in TOKENIZERS:
        raise ValueError(
            f"{directory}: config.json names tokenizer_type {kind!r}; known: {sorted(TOKENIZERS)}"
        )
    return TOKENIZERS[kind].from_pretrained(directory)


__all__ = [
    "RQKMeans",
    "RQVAE",
    "SIDTokenizer",
    "TOKENIZERS",
    "build_sid_tokenizer",
    "check_sid_capacity",
    "load_sid_tokenizer",
]
