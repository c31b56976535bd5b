"""Prefix n-gram memory tables: the vector store behind PrefixMem.

A SID token at level ``l`` (0-based) with codes ``(c_0, ..., c_l)`` of the same item is keyed by
the n-grams of its prefix that end at itself: ``(c_{l-n+1}, ..., c_l)`` for ``n = 1 .. l+1``
(capped at ``max_order``). Every (level, order) pair owns its own tables, so the same code at a
different level, or the same n-gram ending at a different level, never shares a row.

Where the number of possible n-grams of a (level, order) fits ``table_size`` the n-gram is indexed
directly (mixed radix, no collisions). Beyond that, ``num_heads`` hash heads each map the n-gram
into their own prime-sized table with their own hash: two n-grams that collide in one head almost
never collide in all of them, and the heads' vectors are concatenated, so the result stays
distinguishable. All tables live in one ``nn.Embedding`` so a lookup for ``[B, T]`` tokens is a
single gather.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

NORMS = ("rms", "layer")
GATES = ("scalar", "context")


@dataclass
class PrefixMemConfig:
    """Hyper-parameters of a PrefixMem (JSON-able).

    codebook_sizes: K_l per SID level (L levels).
    hidden_size: width of the LM the memory vector is projected to.
    head_dim: width of one table row.
    num_heads: tables per (level, order); hashed orders use one hash per head. The memory vector of
        one order is ``num_heads * head_dim`` wide, of one token ``max_order * num_heads * head_dim``.
    max_order: longest n-gram looked up (None: all levels, i.e. the full prefix at every level).
    table_size: an n-gram space of at most this many entries is indexed directly; larger spaces are
        hashed into tables of prime sizes <= table_size (one distinct prime per head).
    norm: "rms" or "layer", applied to the concatenated memory vector before the projection.
    gate: "scalar" (one learned scalar per level) or "context" (sigmoid of the scaled dot product of
        the normalised memory key and the normalised token embedding, times a per-level scale).
    gate_init: initial per-level scale; 0.0 makes attaching to a trained LM an exact no-op.
    init_std: standard deviation of the table rows at initialisation.
    hash_seed: seed of the hash multipliers (part of the artifact: changing it scrambles the tables).
    """

    codebook_sizes: list[int] = field(default_factory=list)
    hidden_size: int = 256
    head_dim: int = 16
    num_heads: int = 2
    max_order: int | None = None
    table_size: int = 16_384
    norm: str = "rms"
    gate: str = "scalar"
    gate_init: float = 0.0
    init_std: float = 0.02
    hash_seed: int = 0

    def __post_init__(self) -> None:
        self.codebook_sizes = [int(k) for k in self.codebook_sizes]
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(
                f"codebook_sizes={self.codebook_sizes!r}: give one positive size per SID level"
            )
        for name in ("hidden_size", "head_dim", "num_heads", "table_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.max_order is not None and not int(self.max_order) >= 1:
            raise ValueError(f"max_order={self.max_order!r} must be >= 1 or None (all levels)")
        if self.table_size < 2:
            raise ValueError(f"table_size={self.table_size} must be >= 2")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: choose one of {NORMS}")
        if self.gate not in GATES:
            raise ValueError(f"gate={self.gate!r}: choose one of {GATES}")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def orders(self) -> int:
        """Number of n-gram orders looked up per token (N)."""
        return min(self.num_levels, self.max_order or self.num_levels)

    @property
    def memory_dim(self) -> int:
        """Width of the concatenated memory vector: N * num_heads * head_dim."""
        return self.orders * self.num_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PrefixMemConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown PrefixMemConfig keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % f for f in range(3, math.isqrt(n) + 1, 2))


def primes_at_most(n: int, count: int) -> list[int]:
    """The ``count`` largest primes <= n, largest first (distinct, so heads hash independently)."""
    out = []
    p = n
    while len(out) < count and p >= 2:
        if _is_prime(p):
            out.append(p)
        p -= 1
    if len(out) < count:
        raise ValueError(f"table_size={n} has fewer than {count} primes below it; raise table_size")
    return out


class PrefixMemory(nn.Module):
    """Prefix n-gram lookup: (level, prefix codes) -> concatenated memory vector.

    Slot (l, n) for level l and order n (1 <= n <= min(l + 1, N)) owns ``num_heads`` tables.
    Buffers (all indexed [L, N, ...]) describe the slots so that the lookup is pure tensor code.
    """

    def __init__(self, config: PrefixMemConfig):
        super().__init__()
        self.config = config
        L, N, H = config.num_levels, config.orders, config.num_heads
        K = config.codebook_sizes
        slot_valid = torch.zeros(L, N, dtype=torch.bool)
        is_direct = torch.zeros(L, N, dtype=torch.bool)
        offsets = torch.zeros(L, N, H, dtype=torch.long)
        sizes = torch.ones(L, N, H, dtype=torch.long)
        strides = torch.zeros(L, N, N, dtype=torch.long)
        gen = torch.Generator().manual_seed(config.hash_seed)
        # odd multipliers in [2^31, 2^62): products wrap in int64, which is deterministic
        mult = torch.randint(2**31, 2**62, (L, N, H), generator=gen) | 1
        add = torch.randint(0, 2**62, (L, N, H), generator=gen)
        hashed_primes = primes_at_most(config.table_size, H)
        row = 0
        for level in range(L):
            for n in range(1, min(level + 1, N) + 1):
                lv = list(range(level - n + 1, level + 1))
                space = math.prod(K[j] for j in lv)
                # mixed radix over the n-gram's codes, last level fastest
                stride = 1
                for i in reversed(range(n)):
                    strides[level, n - 1, i] = stride
                    stride *= K[lv[i]]
                slot_valid[level, n - 1] = True
                direct = space <= config.table_size
                is_direct[level, n - 1] = direct
                for h in range(H):
                    size = space if direct else hashed_primes[h]
                    offsets[level, n - 1, h] = row
                    sizes[level, n - 1, h] = size
                    row += size
        self.num_rows = row
        self.table = nn.Embedding(row, config.head_dim)
        nn.init.normal_(self.table.weight, std=config.init_std)
        for name, t in {
            "slot_valid": slot_valid,
            "is_direct": is_direct,
            "offsets": offsets,
            "sizes": sizes,
            "strides": strides,
            "hash_mult": mult,
            "hash_add": add,
        }.items():
            # derived from the config: rebuilt on load, never saved
            self.register_buffer(name, t, persistent=False)

    def rows(
        self,
        levels: torch.Tensor,
        prefix_codes: torch.Tensor,
        order_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows of every (order, head) for each token.

        levels: LongTensor [*] level of each token, -1 for non-SID tokens.
        prefix_codes: LongTensor [*, L]; entries 0..level are the token's prefix codes (the rest ignored).
        order_mask: BoolTensor [*, N] or None; False drops an order (e.g. its prefix is not known).
        Returns (rows LongTensor [*, N, H], used BoolTensor [*, N]).
        """
        cfg = self.config
        N = cfg.orders
        if prefix_codes.shape[-1] != cfg.num_levels:
            raise ValueError(
                f"prefix_codes has {prefix_codes.shape[-1]} levels, the memory has {cfg.num_levels}"
            )
        lvl = levels.clamp(min=0)
        n_range = torch.arange(1, N + 1, device=levels.device)
        # used[*, n-1]: order n exists at this level and the token is a SID token
        used = self.slot_valid[lvl] & (levels >= 0).unsqueeze(-1)
        if order_mask is not None:
            used = used & order_mask
        # code index of the i-th code of the order-n n-gram: level - n + 1 + i  -> [*, N, N]
        i_range = torch.arange(N, device=levels.device)
        code_level = lvl[..., None, None] - n_range[:, None] + 1 + i_range
        in_gram = (i_range < n_range[:, None]) & (code_level >= 0)
        # out-of-gram entries are clamped into range, gathered, then zeroed
        gather_at = code_level.clamp(0, cfg.num_levels - 1).flatten(-2)
        codes = prefix_codes.gather(-1, gather_at).unflatten(-1, (N, N))
        codes = torch.where(in_gram, codes, torch.zeros_like(codes))
        key = (codes * self.strides[lvl]).sum(-1)  # [*, N] exact mixed-radix index
        mult, add, sizes = self.hash_mult[lvl], self.hash_add[lvl], self.sizes[lvl]  # [*, N, H]
        y = key.unsqueeze(-1) * mult + add
        y = y ^ (y >> 29)
        hashed = torch.remainder(y, sizes)
        local = torch.where(self.is_direct[lvl].unsqueeze(-1), key.unsqueeze(-1), hashed)
        rows = self.offsets[lvl] + local
        rows = torch.where(used.unsqueeze(-1), rows, torch.zeros_like(rows))
        return rows, used

    def forward(
        self,
        levels: torch.Tensor,
        prefix_codes: torch.Tensor,
        order_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Concatenated memory vector per token.

        levels: LongTensor [*]; prefix_codes: LongTensor [*, L]; order_mask: BoolTensor [*, N] or None.
        Returns FloatTensor [*, N * H * head_dim]; orders that are not used (too deep for the
        level, masked, or non-SID token) contribute zeros.
        """
        rows, used = self.rows(levels, prefix_codes, order_mask)
        vec = self.table(rows)  # [*, N, H, D]
        vec = vec * used[..., None, None].to(vec.dtype)
        return vec.flatten(-3)

    def extra_repr(self) -> str:
        c = self.config
        direct = int(self.is_direct[self.slot_valid].sum())
        hashed = int((~self.is_direct & self.slot_valid).sum())
        return (
            f"levels={c.num_levels}, orders={c.orders}, heads={c.num_heads}, head_dim={c.head_dim}, "
            f"rows={self.num_rows}, direct_slots={direct}, hashed_slots={hashed}"
        )
