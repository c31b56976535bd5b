"""SID tokenizers: item embeddings [N, D] -> hierarchical codes [N, L].

`build_sid_tokenizer("rqvae" | "rqkmeans", **kwargs)` makes one; `load_sid_tokenizer(dir)`
reads any saved one, dispatching on `tokenizer_type` in its config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sid.tokenizers.base import CONFIG_NAME, SIDTokenizer, check_sid_capacity
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
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a SID tokenizer directory holds {CONFIG_NAME} and "
            "model.safetensors written by save_pretrained"
        )
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("tokenizer_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path} is not a JSON object ({err}); re-save the tokenizer") from err
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
