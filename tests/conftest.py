"""Helpers shared by the tests: word-level tokenizers, tiny Llamas and random unique SIDs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from sid.codes import SemanticIDs
from sid.model import tiny_config


def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over `words` (which hold <pad>, <unk> and maybe <s>)."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>" if "<s>" in words else None,
    )


def tiny_llama(vocab_size: int, *, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A seeded random Llama in eval mode: `sid.model.tiny_config`, smaller, with LlamaConfig's
    default special-token ids and untied embeddings unless `overrides` say otherwise."""
    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(vocab_size, **settings)).eval()


def random_codes(n: int, sizes: Sequence[int], seed: int) -> torch.Tensor:
    """n distinct random code rows LongTensor [n, L] with codes[:, l] < sizes[l]."""
    g = torch.Generator().manual_seed(seed)
    total = 1
    for k in sizes:
        total *= k
    flat = torch.randperm(total, generator=g)[:n]
    codes = []
    for k in reversed(sizes):
        codes.append(flat % k)
        flat = flat // k
    return torch.stack(codes[::-1], 1)


def unique_semantic_ids(codes: torch.Tensor, sizes: Sequence[int]) -> SemanticIDs:
    """SemanticIDs of unique `codes` with no collision level, so its SIDs are exactly `codes`."""
    n = len(codes)
    sids = SemanticIDs.from_codes(
        codes,
        [str(i) for i in range(n)],
        codebook_sizes=list(sizes),
        policy="reassign",
        distances=torch.zeros(n, sizes[-1]),
        collision_level=False,
    )
    assert torch.equal(sids.codes, codes)
    return sids
