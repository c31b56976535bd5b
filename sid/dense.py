"""Per-item ID embeddings and a dense retrieval branch beside the SID tokens.

Two capabilities share one learned table ``E [N, H]`` (one row per catalogue item, width of
the LM):

- **item-ID embedding**: at the position of an item's *last* SID token (the first position
  where the whole SID, hence the item, is known) ``E[item]`` is added to the input
  embedding. Adding it earlier would leak the item's deeper codes to the positions that must
  predict them.
- **dense head**: the history state at the position that starts the next item (its outcome
  token, which is also where the beam search starts decoding) scores every item by dot
  product with ``E`` (tied input/output item vectors, as in SASRec); trained with full-softmax
  cross-entropy over the catalogue jointly with the LM loss. At serving time the top items of
  this ANN-style dot product are merged with the beam candidates (UniPinRec-style).

``DenseRetrieval.attach(lm, vocab, sids)`` wraps the LM's input embedding (any wrapper already
there, e.g. PrefixMem's, stays inside); ``detach`` restores it. The module saves as
``config.json`` + ``model.safetensors`` like the other artifacts.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sid.artifacts import load_artifact, save_artifact

IGNORE = -100
# Share of the beam log-prob in the dense + beam fusion (`fused_scores`); chosen on the
# validation split of ML-1M by benchmarks/bench_quality.py, never on test. The one default
# `evaluate_run`, eval.py and `Recommender` read.
DENSE_BEAM_WEIGHT = 0.0


@dataclass
class DenseConfig:
    num_items: int
    hidden_size: int
    init_std: float = 0.02
    add_to_input: bool = True  # False: dense head only, no item-ID embedding at the input

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DenseConfig:
        try:
            return cls(
                **{
                    k: d[k]
                    for k in ("num_items", "hidden_size", "init_std", "add_to_input")
                    if k in d
                }
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"dense config {d!r} lacks a field ({err})") from None


class DenseRetrieval(nn.Module):
    """Item table ``items.weight [N, H]``: ID embedding at the input, dense scorer at the output."""

    def __init__(self, config: DenseConfig):
        super().__init__()
        if config.num_items < 1 or config.hidden_size < 1:
            raise ValueError(f"num_items and hidden_size must be >= 1, got {config}")
        self.config = config
        self.items = nn.Embedding(config.num_items, config.hidden_size)
        nn.init.normal_(self.items.weight, std=config.init_std)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """h FloatTensor [..., H] → logits over the catalogue [..., N] (column i = item i)."""
        return h.float() @ self.items.weight.float().T

    # ------------------------------------------------------------------ attach / detach
    def attach(self, model: nn.Module, vocab, sids) -> DenseItemEmbedding:
        """Wrap ``model``'s input embedding so it adds ``E[item]`` at each item's last SID token.

        vocab: a bound SIDVocab; sids: the SemanticIDs whose trie maps a full SID to its item.
        The wrapped embedding's weight stays the same Parameter (a tied lm_head stays tied).
        """
        if len(sids) != self.config.num_items:
            raise ValueError(
                f"dense table has {self.config.num_items} items, the SIDs {len(sids)}: build "
                "DenseConfig(num_items=len(sids))"
            )
        emb = model.get_input_embeddings()
        if isinstance(emb, DenseItemEmbedding):
            raise ValueError("model already has a DenseRetrieval attached; detach it first")
        wrapper = DenseItemEmbedding(emb, self, vocab, sids)
        model.set_input_embeddings(wrapper)
        return wrapper

    @staticmethod
    def detach(model: nn.Module) -> DenseRetrieval:
        """Restore the embedding that was wrapped; returns the DenseRetrieval that was attached."""
        wrapper = model.get_input_embeddings()
        if not isinstance(wrapper, DenseItemEmbedding):
            raise ValueError(f"no DenseRetrieval is attached to {type(model).__name__}")
        model.set_input_embeddings(wrapper.inner)
        return wrapper.dense

    @staticmethod
    def attached(model: nn.Module) -> DenseItemEmbedding | None:
        emb = model.get_input_embeddings()
        return emb if isinstance(emb, DenseItemEmbedding) else None

    # ------------------------------------------------------------------ artifacts
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` to directory ``path`` atomically."""
        save_artifact(path, self.config.to_dict(), {"items": self.items.weight})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, map_location="cpu") -> DenseRetrieval:
        config, state = load_artifact(
            path, what="a dense retrieval directory written by save_pretrained",
            map_location=map_location,
        )  # fmt: skip
        module = cls(DenseConfig.from_dict(config))
        if "items" not in state or tuple(state["items"].shape) != tuple(module.items.weight.shape):
            raise ValueError(
                f"{path}: weights do not match config {config} (tensor 'items' missing or of "
                "another shape)"
            )
        with torch.no_grad():
            module.items.weight.copy_(state["items"])
        return module.to(map_location)


class DenseItemEmbedding(nn.Module):
    """Input-embedding wrapper: inner embedding + ``E[item]`` at every item's last SID token."""

    def __init__(self, inner: nn.Module, dense: DenseRetrieval, vocab, sids):
        super().__init__()
        weight = getattr(inner, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            raise ValueError(f"cannot wrap input embedding {type(inner).__name__}: no 2-D weight")
        if weight.shape[1] != dense.config.hidden_size:
            raise ValueError(
                f"LM hidden size {weight.shape[1]} != dense hidden_size "
                f"{dense.config.hidden_size}; build DenseConfig(hidden_size={weight.shape[1]})"
            )
        if getattr(vocab, "level_start", None) is None:
            raise ValueError("vocab is not bound to token ids: call vocab.add_to_tokenizer first")
        V = weight.shape[0]
        last = max(st + k for st, k in zip(vocab.level_start, vocab.codebook_sizes, strict=True))
        if last > V:
            raise ValueError(
                f"SID tokens use ids up to {last - 1} but the embedding has {V} rows: call "
                "vocab.resize_model(model) before attaching"
            )
        token_level, token_code = vocab.token_levels_codes(torch.arange(V))
        token_code = token_code.clamp(min=0)  # non-SID rows: level -1, code 0
        # the weight is reached through `inner` only (a second attribute would save it twice);
        # it stays the same Parameter, so a tied lm_head stays tied
        self.inner = inner
        self.dense = dense
        self.num_levels = vocab.num_levels
        self.register_buffer("token_level", token_level.to(weight.device), persistent=False)
        self.register_buffer("token_code", token_code.to(weight.device), persistent=False)
        for level, table in enumerate(sids.trie.node_child):
            self.register_buffer(f"trie_{level}", table.to(weight.device), persistent=False)

    weight = property(lambda self: self.inner.weight)
    accepts_prefix_codes = property(lambda self: getattr(self.inner, "accepts_prefix_codes", False))
    num_embeddings = property(lambda self: self.weight.shape[0])
    embedding_dim = property(lambda self: self.weight.shape[1])
    padding_idx = property(lambda self: getattr(self.inner, "padding_idx", None))

    def item_at(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids LongTensor [B, T] → item index LongTensor [B, T] at positions holding an
        item's last SID token preceded by its other SID tokens in level order; -1 elsewhere."""
        L = self.num_levels
        lv = self.token_level[input_ids]
        cd = self.token_code[input_ids]
        T = input_ids.shape[1]
        # level l of the item ending at t sits at t - (L - 1 - l)
        ok = lv == L - 1
        node = torch.zeros_like(input_ids)
        for level in range(L):
            s = L - 1 - level
            lv_s = F.pad(lv, (s, 0), value=-1)[:, :T]
            cd_s = F.pad(cd, (s, 0), value=0)[:, :T]
            ok = ok & (lv_s == level)
            table = getattr(self, f"trie_{level}")
            node = table[node.clamp_min(0), cd_s.clamp(0, table.shape[1] - 1)]
            ok = ok & (node >= 0)
        return torch.where(ok, node, -1)

    def forward(self, input_ids: torch.Tensor, prefix_codes: torch.Tensor | None = None):
        """input_ids LongTensor [B, T] (or [T]) → FloatTensor [B, T, H]."""
        if input_ids.dim() == 1:
            return self.forward(input_ids[None], prefix_codes)[0]
        if self.accepts_prefix_codes:
            x = self.inner(input_ids, prefix_codes=prefix_codes)
        else:
            x = self.inner(input_ids)
        if not self.dense.config.add_to_input:
            return x
        items = self.item_at(input_ids)
        add = self.dense.items(items.clamp_min(0)) * (items >= 0).unsqueeze(-1)
        return x + add.to(x.dtype)


def dense_targets(
    wrapper: DenseItemEmbedding, input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Dense-head target of every position, LongTensor [B, T]: at an outcome token whose item
    is a training target (its SID tokens carry labels), that item's index; -100 elsewhere."""
    L = wrapper.num_levels
    T = input_ids.shape[1]
    items = wrapper.item_at(input_ids)
    ahead = F.pad(items, (0, L), value=-1)[:, L : L + T]  # item ending L tokens later
    labelled = F.pad(labels, (0, 1), value=IGNORE)[:, 1 : 1 + T] != IGNORE
    is_outcome = wrapper.token_level[input_ids] < 0
    keep = (ahead >= 0) & labelled & is_outcome
    return torch.where(keep, ahead, IGNORE)


def dense_loss(
    wrapper: DenseItemEmbedding,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_negatives: int = 0,
    window_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the dense head; hidden FloatTensor [B, T, H].

    `num_negatives` 0 (or at least the catalogue's size): full softmax over every item, logits
    [P, N] for the P target positions of the batch. Otherwise a sampled softmax: each position
    scores its own target against `num_negatives` items drawn uniformly for the whole batch
    (a draw equal to one of the position's targets is masked out), logits [P, 1 + K]. Its
    memory and time do not grow with the catalogue: what a 10^6-item catalogue needs, where
    the full logits of a batch take gigabytes (BENCHMARKS.md, Scale). With a uniform proposal
    the log-Q correction is the same for every candidate and drops out of the softmax.

    `window_items` LongTensor [B, n, W] (future-window training, `sid.training.SIDCollator`):
    item j's window targets, the item itself first, -1 padded. The loss at item j's outcome
    token is then the mean over its window of each target's softmax cross-entropy (a
    multi-positive softmax); with W = 1 it is the next-item loss.
    """
    targets = dense_targets(wrapper, input_ids, labels)
    keep = targets != IGNORE
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    h, target = hidden[keep].float(), targets[keep]
    if window_items is None:
        positives = target[:, None]  # [P, 1]
    else:  # item j's outcome token sits at position j * (1 + L)
        B, n, W = window_items.shape
        by_position = torch.full((*targets.shape, W), -1, dtype=torch.long, device=h.device)
        by_position[:, : n * (1 + wrapper.num_levels) : 1 + wrapper.num_levels] = window_items
        by_position[..., 0] = targets  # a slot segment's query (past the examples): its target
        positives = by_position[keep]  # [P, W]
    valid = positives >= 0
    table = wrapper.dense.items.weight
    if num_negatives == 0 or num_negatives >= table.shape[0]:
        logits = wrapper.dense.scores(h)  # [P, N]
        nll = logits.logsumexp(-1, keepdim=True) - logits.gather(1, positives.clamp_min(0))
    else:
        negatives = torch.randint(table.shape[0], (num_negatives,), device=table.device)
        positive = (h[:, None, :] * table[positives.clamp_min(0)].float()).sum(-1)  # [P, W]
        sampled = h @ table[negatives].float().T  # [P, K]
        clash = torch.zeros_like(sampled, dtype=torch.bool)
        for k in range(positives.shape[1]):  # a draw that is one of the targets is no negative
            clash |= (negatives[None, :] == positives[:, k : k + 1]) & valid[:, k : k + 1]
        rest = sampled.masked_fill(clash, float("-inf")).logsumexp(-1, keepdim=True)  # [P, 1]
        nll = torch.logaddexp(positive, rest) - positive
    return ((nll * valid).sum(-1) / valid.sum(-1)).mean()


def fused_scores(
    dense_logits: torch.Tensor,
    beam_items: torch.Tensor | None = None,
    beam_scores: torch.Tensor | None = None,
    *,
    beam_weight: float = DENSE_BEAM_WEIGHT,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense full-catalogue scores merged with beam candidates → FloatTensor [B, N].

    dense_logits [B, N]; beam_items [B, K] (-1 padded), beam_scores [B, K] (SID log-probs),
    needed only when ``beam_weight`` is not 0. score = log_softmax(dense) + beam_weight *
    beam_logp, where an item outside the beam gets the user's lowest returned beam log-prob
    (an upper bound on its own). exclude [B, M] item indices (-1 padded) score -inf.
    """
    B, N = dense_logits.shape
    logp = F.log_softmax(dense_logits.float(), dim=-1)
    if beam_weight:
        if beam_items is None or beam_scores is None:
            raise ValueError(f"beam_weight={beam_weight} needs the beam's items and scores")
        finite = torch.isfinite(beam_scores) & (beam_items >= 0)
        floor = beam_scores.masked_fill(~finite, float("inf")).min(dim=1).values
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        beam = floor[:, None].expand(B, N + 1).clone()
        beam.scatter_(1, beam_items.where(finite, N), beam_scores.where(finite, 0.0))
        logp = logp + beam_weight * beam[:, :N]
    if exclude is not None:
        blocked = torch.zeros(B, N + 1, dtype=torch.bool, device=logp.device)
        blocked.scatter_(1, exclude.where(exclude >= 0, N), True)
        logp = logp.masked_fill(blocked[:, :N], float("-inf"))
    return logp


def fuse_with_beam(
    dense_logits: torch.Tensor,
    beam_items: torch.Tensor | None,
    beam_scores: torch.Tensor | None,
    *,
    beam_weight: float = DENSE_BEAM_WEIGHT,
    k: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-k items LongTensor [B, min(k, N)] of :func:`fused_scores` (same arguments)."""
    logp = fused_scores(
        dense_logits, beam_items, beam_scores, beam_weight=beam_weight, exclude=exclude
    )
    return logp.topk(min(k, logp.shape[1]), dim=-1).indices


@torch.no_grad()
def dense_logits(
    lm,
    dense: DenseRetrieval,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    outcome_id: int,
    slot_ids: list[int] | tuple[int, ...] = (),
) -> torch.Tensor:
    """Dense scores of the whole catalogue, FloatTensor [B, N], for LEFT-padded histories
    input_ids/attention_mask [B, T]: the state at the appended outcome token (where the beam
    search starts decoding) dotted with every item vector. One forward of the history.

    `slot_ids` (the ids of `<next_2>` … `<next_k>`): every slot is a query too. They are fed
    after the outcome token at its position, each seeing the history, the outcome token and
    itself (as in training), and the scores are the log of the slots' mixture
    `log(mean_j softmax_j)` over the catalogue."""
    B = input_ids.shape[0]
    dev = input_ids.device
    tok = torch.full((B, 1), outcome_id, dtype=torch.long, device=dev)
    ids = torch.cat([input_ids, tok], 1)
    mask = torch.cat([attention_mask.long(), torch.ones_like(tok)], 1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    if not slot_ids:
        h = lm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions)
        return dense.scores(h.last_hidden_state[:, -1])
    k1 = len(slot_ids)
    T = ids.shape[1]
    slots = torch.tensor(list(slot_ids), dtype=torch.long, device=dev).expand(B, k1)
    ids = torch.cat([ids, slots], 1)
    positions = torch.cat([positions, positions[:, -1:].expand(B, k1)], 1)
    at = torch.arange(T + k1, device=dev)
    allowed = (at[:, None] >= at[None, :]) & (at[None, :] < T)  # causal over history + <o>
    allowed = allowed | torch.eye(T + k1, dtype=torch.bool, device=dev)  # a slot sees itself
    allowed = allowed[None] & torch.cat([mask, torch.ones_like(slots)], 1).bool()[:, None, :]
    allowed = allowed | torch.eye(T + k1, dtype=torch.bool, device=dev)[None]  # padding rows
    bias = torch.zeros(allowed.shape, dtype=lm.dtype, device=dev)
    bias = bias.masked_fill(~allowed, torch.finfo(lm.dtype).min)[:, None]
    h = lm.base_model(input_ids=ids, attention_mask=bias, position_ids=positions)
    logp = F.log_softmax(dense.scores(h.last_hidden_state[:, -(k1 + 1) :]).float(), dim=-1)
    return logp.logsumexp(1) - math.log(k1 + 1)
