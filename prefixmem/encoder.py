"""PrefixMem: a gated, prefix-conditioned vector added to an LM's input embedding at SID positions.

At a SID token of level ``l`` the memory (``prefixmem.memory``) returns the n-gram vectors of the
token's prefix ``(c_0, ..., c_l)``; they are concatenated, normalised, projected to the LM's width
and added to the token embedding through a per-level gate:

    scalar gate:   x = e + s_l * W_v norm(m)
    context gate:  x = e + sigmoid(<rms(W_k norm(m)), rms(e)> / sqrt(d)) * s_l * W_v norm(m)

``s_l`` starts at ``gate_init`` (0.0: attaching to a trained LM is an exact no-op). Non-SID
positions are returned untouched.

:meth:`PrefixMem.attach` swaps the LM's input embedding for a :class:`PrefixMemEmbedding` that
shares the embedding weight Parameter (a tied ``lm_head`` stays tied) and reads each SID token's
prefix from the preceding tokens, from ``prefix_codes`` given by a KV-cached decoder, or, inside
``model.generate``, from the full running sequences that generate hands to
``prepare_inputs_for_generation`` (so greedy, sampling and beam search see the right prefixes;
beam reordering is already applied to those sequences).
"""

from __future__ import annotations

import math
import os
import types

import torch
import torch.nn.functional as F
from torch import nn

from prefixmem.memory import PrefixMemConfig, PrefixMemory
from sid.artifacts import load_artifact, save_artifact


class PrefixMem(nn.Module):
    """Prefix memory encoder: (level, prefix codes) -> gated vector of width ``hidden_size``.

    Works on SID codes, not LM token ids (``PrefixMemEmbedding`` translates ids with the vocab).
    """

    def __init__(self, config: PrefixMemConfig):
        super().__init__()
        self.config = config
        self.memory = PrefixMemory(config)
        D, d = config.memory_dim, config.hidden_size
        self.norm = nn.RMSNorm(D) if config.norm == "rms" else nn.LayerNorm(D)
        self.value = nn.Linear(D, d, bias=False)
        nn.init.normal_(self.value.weight, std=1.0 / math.sqrt(D))
        self.gate_scale = nn.Parameter(torch.full((config.num_levels,), float(config.gate_init)))
        if config.gate == "context":
            self.key = nn.Linear(D, d, bias=False)
            nn.init.normal_(self.key.weight, std=1.0 / math.sqrt(D))
        else:
            self.key = None

    # ------------------------------------------------------------------ lookups
    def features(
        self,
        levels: torch.Tensor,
        prefix_codes: torch.Tensor,
        order_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised memory vector per token, independent of the LM (what pre-training trains).

        levels: LongTensor [*] (-1: non-SID); prefix_codes: LongTensor [*, L]; order_mask: [*, N] or None.
        Returns FloatTensor [*, memory_dim].
        """
        return self.norm(self.memory(levels, prefix_codes, order_mask))

    def encode(
        self,
        levels: torch.Tensor,
        prefix_codes: torch.Tensor,
        order_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ungated memory value per token, projected to the LM width: FloatTensor [*, hidden_size]."""
        return self.value(self.features(levels, prefix_codes, order_mask))

    def gate(
        self, levels: torch.Tensor, memory_norm: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Gate per token, FloatTensor [*, 1]; levels [*], memory_norm [*, D], embeds [*, hidden]."""
        scale = self.gate_scale[levels.clamp(min=0)].unsqueeze(-1)
        if self.key is None:
            return scale
        k = F.rms_norm(self.key(memory_norm), (self.config.hidden_size,))
        e = F.rms_norm(embeds, (self.config.hidden_size,))
        g = torch.sigmoid((k * e).sum(-1, keepdim=True) / math.sqrt(self.config.hidden_size))
        return g * scale

    def forward(
        self,
        embeds: torch.Tensor,
        levels: torch.Tensor,
        prefix_codes: torch.Tensor,
        order_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add the gated memory vector to ``embeds`` at SID positions.

        embeds: FloatTensor [B, T, hidden]; levels: LongTensor [B, T] (-1: non-SID);
        prefix_codes: LongTensor [B, T, L]; order_mask: BoolTensor [B, T, N] or None.
        Returns FloatTensor [B, T, hidden]; rows with level -1 are ``embeds`` unchanged.
        """
        if embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"embedding width {embeds.shape[-1]} != PrefixMem hidden_size "
                f"{self.config.hidden_size}; build PrefixMem with the LM's hidden size"
            )
        mem = self.features(levels, prefix_codes, order_mask)
        value = self.value(mem).to(embeds.dtype)
        g = self.gate(levels, mem, embeds.float()).to(embeds.dtype)
        return torch.where((levels >= 0).unsqueeze(-1), embeds + g * value, embeds)

    # ------------------------------------------------------------------ attach / detach
    def attach(self, model: nn.Module, vocab) -> PrefixMemEmbedding:
        """Wrap ``model``'s input embedding so it adds this PrefixMem at SID positions.

        model: any HF causal LM whose embeddings already hold the vocab's tokens (call
            ``vocab.resize_model(model)`` first: resizing after attaching replaces the wrapper).
        vocab: a bound SIDVocab (``num_levels``, ``codebook_sizes``, ``level_start``).
        The original embedding weight stays the same Parameter, so a tied ``lm_head`` stays tied.
        Returns the wrapper (also ``model.get_input_embeddings()``).
        """
        emb = model.get_input_embeddings()
        if isinstance(emb, PrefixMemEmbedding):
            raise ValueError("model already has a PrefixMem attached; call PrefixMem.detach first")
        wrapper = PrefixMemEmbedding(emb, self, vocab)
        model.set_input_embeddings(wrapper)
        if hasattr(model, "prepare_inputs_for_generation"):
            # generate feeds one token per step; the running sequences it passes here carry the prefix
            model.prepare_inputs_for_generation = types.MethodType(
                _prepare_inputs_with_prefix, model
            )
        return wrapper

    @staticmethod
    def detach(model: nn.Module) -> PrefixMem:
        """Restore ``model``'s original input embedding; returns the PrefixMem that was attached."""
        wrapper = model.get_input_embeddings()
        if not isinstance(wrapper, PrefixMemEmbedding):
            raise ValueError(f"no PrefixMem is attached to {type(model).__name__}")
        original = wrapper.original_embedding()
        model.set_input_embeddings(original)
        if "prepare_inputs_for_generation" in vars(model):
            del model.prepare_inputs_for_generation
        return wrapper.prefixmem

    # ------------------------------------------------------------------ artifacts
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` to directory ``path`` atomically."""
        save_artifact(path, self.config.to_dict(), self.state_dict())

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> PrefixMem:
        """Load a PrefixMem written by :meth:`save_pretrained`."""
        config, state = load_artifact(
            path,
            what="a PrefixMem directory written by save_pretrained",
            map_location=map_location,
        )
        module = cls(PrefixMemConfig.from_dict(config))
        module.load_state_dict(state)
        return module.to(map_location)


def _prepare_inputs_with_prefix(self, input_ids, *args, **kwargs):
    """``prepare_inputs_for_generation`` that first shows the embedding the full running ids.

    Bound to the model by :meth:`PrefixMem.attach`. ``input_ids`` here are the whole sequences
    (prompt + generated so far, beams already reordered); the model is then fed only the new
    token(s), whose prefixes the wrapper reads from these ids.
    """
    emb = self.get_input_embeddings()
    if isinstance(emb, PrefixMemEmbedding):
        emb.set_generation_context(input_ids)
    return type(self).prepare_inputs_for_generation(self, input_ids, *args, **kwargs)


class PrefixMemEmbedding(nn.Module):
    """Input-embedding wrapper: token embedding + PrefixMem at SID positions.

    ``weight`` is the wrapped embedding's weight Parameter itself, so the state-dict key of the
    embedding (``...embed_tokens.weight``) and weight tying are unchanged; the PrefixMem's
    parameters appear under ``...embed_tokens.prefixmem.``.
    """

    accepts_prefix_codes = True

    def __init__(self, embedding: nn.Module, prefixmem: PrefixMem, vocab):
        super().__init__()
        weight = getattr(embedding, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            raise ValueError(
                f"cannot wrap input embedding {type(embedding).__name__}: it has no 2-D weight"
            )
        if weight.shape[1] != prefixmem.config.hidden_size:
            raise ValueError(
                f"LM hidden size {weight.shape[1]} != PrefixMem hidden_size "
                f"{prefixmem.config.hidden_size}; build PrefixMemConfig(hidden_size={weight.shape[1]})"
            )
        sizes = [int(k) for k in vocab.codebook_sizes]
        if sizes != prefixmem.config.codebook_sizes:
            raise ValueError(
                f"vocab codebook_sizes {sizes} != PrefixMem codebook_sizes "
                f"{prefixmem.config.codebook_sizes}"
            )
        if getattr(vocab, "level_start", None) is None:
            raise ValueError("vocab is not bound to token ids: call vocab.add_to_tokenizer first")
        V = weight.shape[0]
        token_level = torch.full((V,), -1, dtype=torch.long)
        token_code = torch.zeros(V, dtype=torch.long)
        for level, (start, k) in enumerate(zip(vocab.level_start, sizes, strict=True)):
            if start + k > V:
                raise ValueError(
                    f"SID level {level} uses token ids up to {start + k - 1} but the embedding has "
                    f"{V} rows: call vocab.resize_model(model) before attaching PrefixMem"
                )
            token_level[start : start + k] = level
            token_code[start : start + k] = torch.arange(k)
        self.weight = weight
        self.prefixmem = prefixmem
        # kept outside the module tree: its weight is self.weight, registering it would save it twice
        self.__dict__["_original"] = embedding
        self.register_buffer("token_level", token_level.to(weight.device), persistent=False)
        self.register_buffer("token_code", token_code.to(weight.device), persistent=False)
        self.num_levels = len(sizes)
        self._generation_ids: torch.Tensor | None = None

    # nn.Embedding look-alike attributes that HF code reads
    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def padding_idx(self):
        return getattr(self._original, "padding_idx", None)

    def original_embedding(self) -> nn.Module:
        """The wrapped embedding module, re-pointed at the (possibly moved) shared weight."""
        if self._original.weight is not self.weight:
            self._original.weight = self.weight
        return self._original

    def _apply(self, fn, recurse=True):
        # keep the unregistered original's buffers (e.g. an embed_scale) on the same device/dtype
        super()._apply(fn, recurse)
        self._original._apply(fn, recurse)
        return self

    def set_generation_context(self, input_ids: torch.Tensor) -> None:
        """Full running ids [B, S] of the current generate step (consumed by the next forward)."""
        self._generation_ids = input_ids

    # ------------------------------------------------------------------ prefixes
    def prefix_context(
        self, input_ids: torch.Tensor, prefix_codes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level, prefix codes and usable n-gram orders of every token.

        input_ids: LongTensor [B, T]. A SID token at level l takes the codes of levels l-1, l-2, ...
        from the tokens right before it as long as their levels count down (l-1 at shift 1, l-2 at
        shift 2, ...). Levels not found that way come from ``prefix_codes`` [B, P] (codes of levels
        0..P-1 of the item being decoded) when given; a SID token whose prefix is then still
        incomplete is a ValueError. Without ``prefix_codes`` an incomplete prefix (e.g. a window
        that cuts an item) keeps only the n-grams whose codes are all known.
        Returns levels LongTensor [B, T] (-1: non-SID), prefix LongTensor [B, T, L],
        order_mask BoolTensor [B, T, N].
        """
        L = self.num_levels
        N = self.prefixmem.config.orders
        lv = self.token_level[input_ids]
        cd = self.token_code[input_ids]
        level_range = torch.arange(L, device=input_ids.device)
        at = level_range == lv.unsqueeze(-1)  # [B, T, L]
        prefix = torch.where(at, cd.unsqueeze(-1), 0)
        known = at.clone()
        chain = lv >= 0
        for s in range(1, L):
            # the token s places back must sit at level lv - s, and all tokens between must too
            lv_s = F.pad(lv, (s, 0), value=-1)[:, : lv.shape[1]]
            cd_s = F.pad(cd, (s, 0), value=0)[:, : cd.shape[1]]
            chain = chain & (lv_s == lv - s) & (lv - s >= 0)
            hit = chain.unsqueeze(-1) & (level_range == (lv - s).unsqueeze(-1))
            prefix = torch.where(hit, cd_s.unsqueeze(-1), prefix)
            known = known | hit
        below = level_range < lv.unsqueeze(-1)  # levels 0..lv-1 make up the prefix
        if prefix_codes is not None:
            P = prefix_codes.shape[-1]
            if prefix_codes.dim() != 2 or prefix_codes.shape[0] != input_ids.shape[0] or P > L:
                raise ValueError(
                    f"prefix_codes must be [B={input_ids.shape[0]}, l<={L}], got {tuple(prefix_codes.shape)}"
                )
            given = torch.zeros(input_ids.shape[0], L, dtype=torch.long, device=input_ids.device)
            given[:, :P] = prefix_codes
            fill = below & ~known & (level_range < P)
            prefix = torch.where(fill, given.unsqueeze(1), prefix)
            known = known | fill
            missing = below & ~known
            if bool(missing.any()):
                b, t, j = (int(x) for x in missing.nonzero()[0])
                raise ValueError(
                    f"row {b}, position {t}: SID token at level {int(lv[b, t])} needs the code of "
                    f"level {j}, but prefix_codes has only {P} levels and the input does not "
                    "contain it; pass the codes of levels 0..l-1 decoded so far"
                )
        # contiguous run of known levels ending at the token: orders 1..run are usable
        run = (known & (level_range <= lv.unsqueeze(-1))).sum(-1)
        order_mask = torch.arange(1, N + 1, device=input_ids.device) <= run.unsqueeze(-1)
        return lv, prefix, order_mask

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        orig = self._original
        if type(orig) is nn.Embedding:
            return F.embedding(
                input_ids, self.weight, orig.padding_idx, orig.max_norm, orig.norm_type,
                orig.scale_grad_by_freq, orig.sparse,
            )  # fmt: skip
        return self.original_embedding()(input_ids)

    def forward(
        self, input_ids: torch.Tensor, prefix_codes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids: LongTensor [B, T] (or [T]); prefix_codes: LongTensor [B, l] or None.

        Returns FloatTensor [B, T, hidden]: the token embeddings plus the gated PrefixMem vector
        at SID positions.
        """
        if input_ids.dim() == 1:  # a single unbatched sequence
            return self.forward(input_ids[None], prefix_codes)[0]
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be [B, T] (or [T]), got shape {tuple(input_ids.shape)}"
            )
        embeds = self._embed(input_ids)
        ctx_ids, T = input_ids, input_ids.shape[1]
        gen, self._generation_ids = self._generation_ids, None
        if (
            prefix_codes is None
            and gen is not None
            and gen.shape[0] == input_ids.shape[0]
            and gen.shape[1] > T
            and torch.equal(gen[:, -T:].to(input_ids.device), input_ids)
        ):
            # KV-cached generate step: look back into the running sequences for the prefix
            ctx_ids = gen[:, -(T + self.num_levels - 1) :].to(input_ids.device)
        lv, prefix, order_mask = self.prefix_context(ctx_ids, prefix_codes)
        lv, prefix, order_mask = lv[:, -T:], prefix[:, -T:], order_mask[:, -T:]
        return self.prefixmem(embeds, lv, prefix, order_mask)
