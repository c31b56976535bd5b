"""The SID tokenizer protocol and what every tokenizer shares: input checks and artifact I/O.

A SID tokenizer maps item embeddings X: float[N, D] to raw hierarchical codes LongTensor[N, L]
(level 0 coarsest). Raw codes may collide; `sid.codes.SemanticIDs` makes them unique.
Tokenizers are scikit-learn shaped: hyperparameters in `__init__`, `fit(X) -> self`, and
Hugging Face shaped on disk: `save_pretrained(dir)` writes `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sid.artifacts import CONFIG_NAME, load_artifact, save_artifact


@runtime_checkable
class SIDTokenizer(Protocol):
    """What the rest of the toolkit relies on.

    `codebook_sizes[l]` is K_l, the number of codes at level l; `num_levels` is L.
    `encode` returns LongTensor[N, L] with 0 <= codes[:, l] < K_l. Same seed and same data
    give the same codes. `last_level_distances(X)` -> float[N, K_{L-1}] are the squared
    distances of each item's last-level residual to every last-level code; the `reassign`
    collision policy uses them to move an item to its nearest free code.
    """

    codebook_sizes: list[int]

    @property
    def num_levels(self) -> int: ...

    def fit(self, X) -> SIDTokenizer: ...

    def encode(self, X) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    def last_level_distances(self, X) -> torch.Tensor: ...

    def save_pretrained(self, save_directory: str | os.PathLike) -> None: ...

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SIDTokenizer: ...


def check_codebook_sizes(codebook_sizes: Sequence[int]) -> list[int]:
    """Validate per-level codebook sizes (any number of levels, any size >= 2)."""
    sizes = [codebook_sizes] if isinstance(codebook_sizes, int) else list(codebook_sizes)
    if len(sizes) == 0:
        raise ValueError("codebook_sizes is empty; give one size per level, e.g. (256, 256, 256)")
    for level, k in enumerate(sizes):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(
                f"codebook_sizes[{level}]={k!r}: every level needs an integer codebook size >= 2"
            )
    return [int(k) for k in sizes]


def as_embeddings(X, *, expected_dim: int | None = None, name: str = "X") -> torch.Tensor:
    """Check and convert embeddings to a contiguous float32 CPU tensor [N, D].

    Raises a ValueError naming the first offending row for NaN/inf, and the shape for
    anything that is not a non-empty 2-D matrix of the expected width.
    """
    if isinstance(X, torch.Tensor):
        t = X.detach().to("cpu", torch.float32)
    else:
        try:
            t = torch.as_tensor(np.asarray(X, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric [N, D] matrix: {err}") from err
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D [N, D] matrix, got shape {tuple(t.shape)}"
        )
    if expected_dim is not None and t.shape[1] != expected_dim:
        raise ValueError(
            f"{name} has dimension {t.shape[1]} but the tokenizer was fitted on dimension "
            f"{expected_dim}; embed the items with the same model"
        )
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(str(r) for r in rows[:5])
        raise ValueError(
            f"{name} contains NaN or inf in {len(rows)} row(s), first at row {rows[0]} "
            f"(rows {shown}{', ...' if len(rows) > 5 else ''}); fix or drop those items"
        )
    return t.contiguous()


def check_enough_items(n_items: int, codebook_sizes: Sequence[int]) -> None:
    """k-means style training needs at least K_l vectors per level to place K_l codes."""
    for level, k in enumerate(codebook_sizes):
        if n_items < k:
            fitting = [min(s, max(2, n_items)) for s in codebook_sizes]
            raise ValueError(
                f"only {n_items} items to fit codebook_sizes[{level}]={k}: a level cannot "
                f"have more codes than items. Use codebook sizes <= {n_items}, e.g. "
                f"codebook_sizes={tuple(fitting)}, or fit on a larger catalogue"
            )


def check_sid_capacity(
    n_items: int, codebook_sizes: Sequence[int], *, collision_codebook_size: int | None = None
) -> None:
    """Refuse code spaces that cannot hold `n_items` distinct SIDs.

    The capacity is prod(K_l) times the collision level's size when there is one. Call this
    before fitting: it is the cheap test that no policy can get around.
    """
    capacity = math.prod(int(k) for k in codebook_sizes)
    if collision_codebook_size is not None:
        capacity *= int(collision_codebook_size)
    if capacity < n_items:
        what = f"codebook sizes {tuple(int(k) for k in codebook_sizes)}"
        if collision_codebook_size is not None:
            what += f" plus a collision level of {collision_codebook_size}"
        raise ValueError(
            f"{what} give at most {capacity} distinct SIDs, fewer than the {n_items} items; "
            "increase a codebook size, add a level or enlarge the collision level"
        )


def atomic_save_pretrained(
    save_directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write `config.json` + `model.safetensors` into `save_directory` atomically."""
    save_artifact(save_directory, config, tensors)


def read_pretrained(
    directory: str | os.PathLike, *, expected_type: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read `config.json` + `model.safetensors`; clear errors for missing or mismatched files."""
    config, tensors = load_artifact(
        directory, what="a SID tokenizer directory written by save_pretrained"
    )
    config_path = Path(directory) / CONFIG_NAME
    if "tokenizer_type" not in config:
        raise ValueError(
            f"{config_path} has no 'tokenizer_type'; it was not written by a SID tokenizer"
        )
    if expected_type is not None and config["tokenizer_type"] != expected_type:
        raise ValueError(
            f"{config_path} holds a {config['tokenizer_type']!r} tokenizer, not {expected_type!r}; "
            "use sid.tokenizers.load_sid_tokenizer to load any kind"
        )
    return config, tensors
