"""SID and outcome tokens inside a Hugging Face tokenizer.

Every (level, code) pair of a semantic ID becomes one token: level ``l`` uses the letter
``chr(ord("a") + l)``, so ``(12, 7, 201)`` is written ``<a_12><b_7><c_201>``. Every outcome
label (``like``, ``watch`` …) becomes a token ``<like>``. A model with ``slots`` k > 1 also has
slot tokens ``<next_2>`` … ``<next_k>``: fed after the outcome token, ``<next_j>`` asks for the
item j - 1 places further into the future (slot 1, the next item, needs no token). An
unconditioned vocab (``conditioned=False``) writes every outcome as the one token ``<any>``: the
model then never learns what an outcome means, the baseline that outcome conditioning is
measured against. The tokens are added as special tokens, so the text tokenizer never splits them, and each level's ids form one contiguous
range: token id of (level ``l``, code ``c``) is ``level_start[l] + c``. Decoding can then
compute the logits of one level as a slice of the output matrix instead of the whole vocab.
"""

from __future__ import annotations

import torch
from torch import LongTensor, nn

UNCONDITIONED_TOKEN = "<any>"  # the one outcome token of an unconditioned vocab


def level_letter(level: int) -> str:
    """Letter used in the token strings of ``level`` ("a" for level 0, "b" for level 1 …)."""
    if not 0 <= level < 26:
        raise ValueError(f"level {level} out of range: SIDVocab supports at most 26 levels (a..z)")
    return chr(ord("a") + level)


class SIDVocab:
    """SID tokens ``<a_12>`` … and outcome tokens ``<like>`` … bound to a tokenizer's ids.

    Args:
        codebook_sizes: ``K_l`` for every level ``l`` (``L = len(codebook_sizes)``).
        outcomes: outcome labels, e.g. ``["like", "watch"]``; outcome index = position.
        slots: query slots per decoding step (1: the next item only; k adds ``<next_2>`` …
            ``<next_k>``).
        conditioned: False writes every outcome label as the one token ``<any>`` (an
            unconditioned model: the labels stay known, so data and budgets still parse).

    After :meth:`add_to_tokenizer` (or :meth:`from_dict` of a bound vocab):
        level_start: ``level_start[l]`` is the token id of code 0 at level ``l``.
        outcome_ids: label → token id (the same id for every label when unconditioned).
        slot_ids: token ids of ``<next_2>`` … ``<next_k>`` (empty with one slot).
    """

    def __init__(
        self,
        codebook_sizes: list[int],
        outcomes: list[str],
        slots: int = 1,
        conditioned: bool = True,
    ):
        sizes = [int(k) for k in codebook_sizes]
        if not sizes or any(k <= 0 for k in sizes):
            raise ValueError(
                f"codebook_sizes must be a non-empty list of positive ints, got {codebook_sizes!r}"
            )
        if len(sizes) > 26:
            raise ValueError(f"at most 26 SID levels are supported, got {len(sizes)}")
        outcomes = [str(o) for o in outcomes]
        if len(set(outcomes)) != len(outcomes):
            raise ValueError(f"outcome labels must be unique, got {outcomes!r}")
        for o in outcomes:
            if not o or any(ch in o for ch in "<> \t\n"):
                raise ValueError(
                    f"outcome label {o!r} cannot be a token: use a non-empty label without "
                    "spaces or angle brackets"
                )
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1 (1: the next item only), got {slots!r}")
        clash = [o for o in outcomes if o.startswith("next_") and o[5:].isdigit()]
        if clash and slots > 1:
            raise ValueError(f"outcome labels {clash} clash with the slot tokens <next_j>")
        if not isinstance(conditioned, bool):
            raise ValueError(f"conditioned must be True or False, got {conditioned!r}")
        self.codebook_sizes: list[int] = sizes
        self.num_levels: int = len(sizes)
        self.outcomes: list[str] = outcomes
        self.level_start: list[int] | None = None
        self.outcome_ids: dict[str, int] | None = None
        self.slots: int = slots
        self.conditioned: bool = conditioned
        self.slot_ids: list[int] = []
        # ids added to a tokenizer in this session that still need an embedding initialised
        self._new_token_ids: set[int] = set()

    # ---------------------------------------------------------------- token strings
    def sid_token(self, level: int, code: int) -> str:
        """Token string of (level, code), e.g. ``sid_token(2, 201) == "<c_201>"``."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level} out of range [0, {self.num_levels})")
        if not 0 <= code < self.codebook_sizes[level]:
            raise ValueError(
                f"code {code} out of range for level {level} "
                f"(codebook size {self.codebook_sizes[level]})"
            )
        return f"<{level_letter(level)}_{code}>"

    def outcome_token(self, label: str) -> str:
        """Token string of an outcome label, e.g. ``"<like>"`` (``"<any>"`` when unconditioned)."""
        self._check_outcome(label)
        return f"<{label}>" if self.conditioned else UNCONDITIONED_TOKEN

    def tokens(self) -> list[str]:
        """All token strings: level 0 codes, level 1 codes, …, then the outcome tokens."""
        sid = [
            f"<{level_letter(level)}_{code}>"
            for level, k in enumerate(self.codebook_sizes)
            for code in range(k)
        ]
        return sid + self.outcome_tokens() + self.slot_tokens()

    def outcome_tokens(self) -> list[str]:
        """``["<like>", "<watch>", …]``, or ``["<any>"]`` when unconditioned."""
        return [f"<{o}>" for o in self.outcomes] if self.conditioned else [UNCONDITIONED_TOKEN]

    def slot_tokens(self) -> list[str]:
        """``["<next_2>", …, "<next_k>"]`` (empty with one slot)."""
        return [f"<next_{j}>" for j in range(2, self.slots + 1)]

    # ---------------------------------------------------------------- binding
    @property
    def is_bound(self) -> bool:
        return self.level_start is not None and self.outcome_ids is not None

    def _require_bound(self) -> None:
        if not self.is_bound:
            raise ValueError(
                "this SIDVocab is not bound to token ids yet: call add_to_tokenizer(tokenizer) first"
            )

    def add_to_tokenizer(self, tokenizer) -> None:
        """Add all SID and outcome tokens as special tokens and bind their ids.

        Tokens already in the tokenizer keep their ids (re-binding a saved tokenizer is a
        no-op). Raises ``ValueError`` if a level's ids are not one contiguous range, which
        happens when some but not all of a level's tokens were already in the tokenizer.
        """
        tokens = self.tokens()
        before = set(tokenizer.get_vocab().values()) if hasattr(tokenizer, "get_vocab") else set()
        tokenizer.add_tokens(tokens, special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        unk = getattr(tokenizer, "unk_token_id", None)
        level_start: list[int] = []
        pos = 0
        for level, k in enumerate(self.codebook_sizes):
            level_ids = torch.tensor(ids[pos : pos + k])
            start = int(level_ids[0])
            if not torch.equal(level_ids, torch.arange(start, start + k)):
                raise ValueError(
                    f"token ids of SID level {level} ({level_letter(level)}) are not contiguous "
                    f"(first ids {level_ids[:5].tolist()} …): the tokenizer already held some of "
                    "these tokens with other ids; start from a tokenizer without SID tokens"
                )
            level_start.append(start)
            pos += k
        n_o = len(self.outcome_tokens())
        outcome_ids = (
            {
                label: int(tid)
                for label, tid in zip(self.outcomes, ids[pos : pos + n_o], strict=True)
            }
            if self.conditioned
            else dict.fromkeys(self.outcomes, int(ids[pos]))
        )
        if unk is not None and unk in ids:
            raise ValueError(f"tokenizer mapped an SID/outcome token to its unknown token id {unk}")
        self.level_start = level_start
        self.outcome_ids = outcome_ids
        self.slot_ids = [int(t) for t in ids[pos + n_o :]]
        self._new_token_ids = {int(i) for i in ids} - before

    @property
    def token_id_range(self) -> tuple[int, int]:
        """``(start, end)``: ids of all SID levels and outcomes lie in ``[start, end)``."""
        self._require_bound()
        others = list(self.outcome_ids.values()) + list(self.slot_ids)
        ends = [s + k for s, k in zip(self.level_start, self.codebook_sizes, strict=True)]
        return min(list(self.level_start) + others), max(ends + [i + 1 for i in others])

    def all_token_ids(self) -> LongTensor:
        """LongTensor[n]: the ids of every SID and outcome token."""
        self._require_bound()
        parts = [
            torch.arange(s, s + k)
            for s, k in zip(self.level_start, self.codebook_sizes, strict=True)
        ]
        parts.append(torch.tensor(sorted(set(self.outcome_ids.values())), dtype=torch.long))
        parts.append(torch.tensor(self.slot_ids, dtype=torch.long))
        return torch.cat(parts)

    def slot_id(self, slot: int) -> int:
        """Token id of ``<next_{slot}>`` for slot 2 … k (slot 1 has no token)."""
        self._require_bound()
        if not 2 <= slot <= self.slots:
            raise ValueError(
                f"slot {slot} has no token: this vocab's slot tokens are 2..{self.slots}"
            )
        return self.slot_ids[slot - 2]

    # ---------------------------------------------------------------- conversions
    def sid_token_ids(self, codes: LongTensor) -> LongTensor:
        """codes: LongTensor[..., L] → token ids LongTensor[..., L]."""
        self._require_bound()
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.shape[-1] != self.num_levels:
            raise ValueError(
                f"codes have {codes.shape[-1]} levels in their last dimension, "
                f"this vocab has {self.num_levels}"
            )
        sizes = torch.tensor(self.codebook_sizes, device=codes.device)
        if bool(((codes < 0) | (codes >= sizes)).any()):
            raise ValueError(
                f"codes out of range for codebook sizes {self.codebook_sizes} "
                f"(min {int(codes.min())}, max {int(codes.max())})"
            )
        return codes + torch.tensor(self.level_start, device=codes.device)

    def item_token_ids(self, codes: LongTensor, outcomes: LongTensor) -> LongTensor:
        """One item as the model reads it: its outcome token, then its SID tokens.

        codes: LongTensor[..., L] the items' SIDs; outcomes: LongTensor[...] indices into
        ``outcomes``. Returns LongTensor[..., 1 + L].
        """
        codes = torch.as_tensor(codes, dtype=torch.long)
        outcome_ids = torch.tensor(
            [self.outcome_id(o) for o in self.outcomes], dtype=torch.long, device=codes.device
        )
        outcomes = torch.as_tensor(outcomes, dtype=torch.long, device=codes.device)
        return torch.cat([outcome_ids[outcomes][..., None], self.sid_token_ids(codes)], dim=-1)

    def token_levels_codes(self, ids: LongTensor) -> tuple[LongTensor, LongTensor]:
        """ids: LongTensor[...] → (level, code), both LongTensor[...]; -1 for non-SID tokens."""
        self._require_bound()
        ids = torch.as_tensor(ids, dtype=torch.long)
        level = torch.full_like(ids, -1)
        code = torch.full_like(ids, -1)
        for lv, (s, k) in enumerate(zip(self.level_start, self.codebook_sizes, strict=True)):
            inside = (ids >= s) & (ids < s + k)
            level = torch.where(inside, lv, level)
            code = torch.where(inside, ids - s, code)
        return level, code

    def _check_outcome(self, label: str) -> None:
        if label not in self.outcomes:
            raise ValueError(f"unknown outcome {label!r}; known outcomes: {self.outcomes}")

    def outcome_id(self, label: str) -> int:
        """Token id of an outcome label; ``ValueError`` naming the known labels if unknown."""
        self._check_outcome(label)
        self._require_bound()
        return self.outcome_ids[label]

    # ---------------------------------------------------------------- model
    def resize_model(self, model: nn.Module) -> None:
        """Grow ``model``'s embeddings to hold every bound token and initialise new rows.

        New rows (ids beyond the old matrix, and ids this vocab just added to the tokenizer
        that fall inside an over-allocated matrix) are set to the mean of the existing rows
        plus Gaussian noise with the existing rows' per-dimension std, rescaled to the
        existing rows' mean norm. Distinct rows let the SID codes be told apart from the first
        step; the shared mean and scale keep the first logits in the range the LM already
        uses. An untied output head gets the same treatment (its bias, if any, the mean bias).
        """
        self._require_bound()
        emb = model.get_input_embeddings()
        old_n = emb.weight.shape[0]
        mine = self.all_token_ids()
        needed = int(mine.max()) + 1
        if needed > old_n:
            model.resize_token_embeddings(needed, mean_resizing=False)
        to_init = sorted({int(i) for i in mine.tolist() if i >= old_n} | self._new_token_ids)
        if not to_init:
            return
        new_rows = torch.tensor(to_init, dtype=torch.long)
        # reference rows: the old matrix without any of our tokens
        ref = torch.ones(old_n, dtype=torch.bool)
        ref[mine[mine < old_n]] = False
        if not bool(ref.any()):
            raise ValueError("model has no embedding rows besides SID/outcome tokens to copy from")
        generator = torch.Generator().manual_seed(0)
        in_w = model.get_input_embeddings().weight
        _init_rows(in_w, new_rows, ref, generator)
        out = model.get_output_embeddings()
        if out is not None and out.weight is not in_w and out.weight.data_ptr() != in_w.data_ptr():
            _init_rows(out.weight, new_rows, ref, generator)
            bias = getattr(out, "bias", None)
            if bias is not None:
                with torch.no_grad():
                    bias[new_rows] = bias[: ref.shape[0]][ref].mean()
        self._new_token_ids = set()

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-able dict with the codebook sizes, outcomes and (if bound) the token ids."""
        return {
            "codebook_sizes": list(self.codebook_sizes),
            "outcomes": list(self.outcomes),
            "level_start": None if self.level_start is None else list(self.level_start),
            "outcome_ids": None if self.outcome_ids is None else dict(self.outcome_ids),
            **({"slots": self.slots, "slot_ids": list(self.slot_ids)} if self.slots > 1 else {}),
            **({} if self.conditioned else {"conditioned": False}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SIDVocab:
        """Inverse of :meth:`to_dict`."""
        missing = [k for k in ("codebook_sizes", "outcomes") if k not in d]
        if missing:
            raise ValueError(f"SIDVocab dict lacks keys {missing}; got keys {sorted(d)}")
        vocab = cls(
            d["codebook_sizes"],
            d["outcomes"],
            int(d.get("slots", 1)),
            conditioned=d.get("conditioned", True),
        )
        if d.get("level_start") is not None:
            if len(d["level_start"]) != vocab.num_levels:
                raise ValueError(
                    f"level_start has {len(d['level_start'])} entries for {vocab.num_levels} levels"
                )
            vocab.level_start = [int(s) for s in d["level_start"]]
        if d.get("outcome_ids") is not None:
            if set(d["outcome_ids"]) != set(vocab.outcomes):
                raise ValueError(
                    f"outcome_ids keys {sorted(d['outcome_ids'])} differ from outcomes {vocab.outcomes}"
                )
            vocab.outcome_ids = {k: int(v) for k, v in d["outcome_ids"].items()}
            if not vocab.conditioned and len(set(vocab.outcome_ids.values())) != 1:
                raise ValueError(
                    f"an unconditioned vocab writes every outcome as one token, got {vocab.outcome_ids}"
                )
        if vocab.slots > 1 and vocab.outcome_ids is not None:
            slot_ids = d.get("slot_ids") or []
            if len(slot_ids) != vocab.slots - 1:
                raise ValueError(
                    f"slot_ids has {len(slot_ids)} entries for {vocab.slots} slots (want {vocab.slots - 1})"
                )
            vocab.slot_ids = [int(t) for t in slot_ids]
        return vocab

    def __repr__(self) -> str:
        return (
            f"SIDVocab(codebook_sizes={self.codebook_sizes}, outcomes={self.outcomes}, "
            f"slots={self.slots}, "
            f"{'' if self.conditioned else 'conditioned=False, '}"
            f"level_start={self.level_start})"
        )


@torch.no_grad()
def _init_rows(
    weight: torch.Tensor, rows: LongTensor, ref: torch.Tensor, generator: torch.Generator
) -> None:
    """Set ``weight[rows]`` to mean + per-dim-std noise of ``weight[:len(ref)][ref]``, at their mean norm."""
    old = weight[: ref.shape[0]][ref].float()
    mean, std = old.mean(0), old.std(0, unbiased=False)
    noise = torch.randn(len(rows), old.shape[1], generator=generator)
    new = mean + noise * std
    target = old.norm(dim=1).mean()
    new = new * (target / new.norm(dim=1, keepdim=True).clamp_min(1e-12))
    weight[rows] = new.to(weight.dtype)
