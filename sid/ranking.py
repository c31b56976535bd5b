"""Cross-attention ranking head over the history states that retrieval already computed.

Retrieval proposes, ranking decides. :func:`~sid.retrieval.constrained_beam_search` prefills
the user's history once and hands back its last hidden states (``history_states [B, T, H]``).
The :class:`RankingHead` turns every candidate item into a query built from the LM's input
embeddings of the item's ``L`` SID tokens, lets it cross-attend to those states (pre-norm
cross-attention + FFN blocks), and reads out ``O + 1`` logits: one per outcome label
(``like``, ``watch`` …) and a last **"none"** class meaning "the user does not interact with
this item". ``softmax`` over the ``O + 1`` logits gives ``P(outcome o)`` and ``P(none)``; the
head is trained with cross-entropy where the next item of a user's train sequence has its
outcome as label and negatives (beam-search candidates the user did not take, random items)
have the label "none".

Candidates never attend to each other, so a candidate's score does not depend on which other
candidates are ranked with it, and the order of the input candidates changes nothing.

Serving (:func:`retrieve_and_rank`) runs the beam search once and ranks its candidates by
``sum_o w_o * P(o)`` blended with the beam's own probability; the history is never encoded a
second time. Training the head (:func:`sid.ranking_training.train_ranker`, its examples and
negatives) lives in :mod:`sid.ranking_training`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import BoolTensor, FloatTensor, LongTensor, nn

from sid.artifacts import load_artifact, save_artifact
from sid.retrieval import BeamSearchConfig
from sid.vocab import SIDVocab

NONE_LABEL = "none"
DEFAULT_OUTCOME_WEIGHTS = {"like": 1.0, "watch": 0.3}
# Share of the renormalised beam probability in the ranked score (`rank_candidates`); the one
# default every caller (retrieve_and_rank, evaluate_run, eval.py, Recommender) reads.
DEFAULT_BEAM_WEIGHT = 0.5


# --------------------------------------------------------------------------- config
@dataclass
class RankingHeadConfig:
    """Hyperparameters of :class:`RankingHead` (JSON-able).

    hidden_size: width ``H`` of the LM's hidden states and input embeddings.
    num_levels: ``L``, SID tokens per item (the query concatenates their ``L`` embeddings).
    outcomes: outcome labels, index = position (the "none" class is appended after them).
    head_size: width ``D`` of the head's residual stream.
    n_layers: cross-attention blocks (each: cross-attention + FFN, pre-norm).
    n_heads: attention heads (must divide ``head_size``).
    ffn_mult: FFN inner width = ``ffn_mult * head_size``.
    dropout: dropout on attention weights and residual branches (training only).
    extra_size: width of the optional per-candidate extra vector (e.g. a PrefixMem vector);
        ``None`` means ``hidden_size``. Its projection starts at zero, so a head trained
        without extras is unchanged when none are passed.
    score_features: how many retrieval scores per candidate the head reads (0: none). With
        1, the head is fed the beam log-prob (renormalised over the user's candidate list,
        :func:`beam_score_features`): into its residual stream, and through a linear skip to
        the logits that starts as "interaction logit = that log-prob", so an untrained head
        already orders candidates about as retrieval does. Such a head is trained on the beam
        search's own candidate lists (:func:`sid.ranking_training.train_ranker`). With 2, it
        also reads the dense head's log-probability of each candidate (renormalised over the
        list the same way; ``BeamSearchOutput.prior_scores``), so it can learn how to weigh
        the two retrieval scores against each other and against the cross-attention.
    """

    hidden_size: int
    num_levels: int
    outcomes: list[str] = field(default_factory=lambda: ["like", "watch"])
    head_size: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1
    extra_size: int | None = None
    score_features: int = 0

    def __post_init__(self):
        if self.extra_size is None:
            self.extra_size = self.hidden_size
        self.outcomes = [str(o) for o in self.outcomes]
        for name in ("hidden_size", "num_levels", "head_size", "n_layers", "n_heads", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RankingHeadConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.score_features, int) or not 0 <= self.score_features <= 2:
            raise ValueError(
                "RankingHeadConfig.score_features must be 0 (none), 1 (beam log-prob) or 2 "
                f"(beam and dense log-probs), got {self.score_features!r}"
            )
        if self.head_size % self.n_heads:
            raise ValueError(
                f"head_size={self.head_size} is not divisible by n_heads={self.n_heads}"
            )
        if not self.outcomes or len(set(self.outcomes)) != len(self.outcomes):
            raise ValueError(f"outcomes must be unique non-empty labels, got {self.outcomes!r}")
        if NONE_LABEL in self.outcomes:
            raise ValueError(
                f"outcome label {NONE_LABEL!r} is reserved for the head's no-interaction class"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_classes(self) -> int:
        """``O + 1``: the outcomes and the "none" class (last)."""
        return len(self.outcomes) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RankingHeadConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown RankingHeadConfig keys {unknown}; known keys {sorted(known)}"
            )
        return cls(**d)


# --------------------------------------------------------------------------- module
class _CrossAttentionBlock(nn.Module):
    """Pre-norm block: x += CrossAttn(LN(x), memory); x += FFN(LN(x))."""

    def __init__(self, config: RankingHeadConfig):
        super().__init__()
        d = config.head_size
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.norm_attn = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_mult * d), nn.GELU(), nn.Linear(config.ffn_mult * d, d)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: FloatTensor, memory: FloatTensor, keep: BoolTensor) -> FloatTensor:
        """x: [B, C, D] candidate queries; memory: [B, S, D]; keep: [B, S] True = attendable."""
        B, C, D = x.shape
        h = self.n_heads
        q = self.q(self.norm_attn(x)).view(B, C, h, D // h).transpose(1, 2)  # [B, h, C, d]
        k, v = self.kv(memory).view(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4)  # [B, h, S, d]
        attn = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keep[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = x + self.drop(self.out(attn.transpose(1, 2).reshape(B, C, D)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class RankingHead(nn.Module):
    """Scores candidate items against a user's history states.

    Query of a candidate: ``Linear(L*H → D)`` of its ``L`` concatenated SID token embeddings
    (after a LayerNorm), plus ``Linear(E → D)`` of an optional extra vector. Memory: the LM's
    history states projected to ``D``, plus one learned "null" slot that every query can
    attend to (so an empty or uninformative history is handled without NaNs). Output:
    ``O + 1`` logits per candidate (outcomes, then "none").
    """

    def __init__(self, config: RankingHeadConfig):
        super().__init__()
        self.config = config
        H, D, L = config.hidden_size, config.head_size, config.num_levels
        self.query_norm = nn.LayerNorm(L * H)
        self.query_proj = nn.Linear(L * H, D)
        self.extra_proj = nn.Linear(config.extra_size, D)
        # an extra vector is a no-op until trained with one
        nn.init.zeros_(self.extra_proj.weight)
        nn.init.zeros_(self.extra_proj.bias)
        self.memory_norm = nn.LayerNorm(H)
        self.memory_proj = nn.Linear(H, D)
        self.null_memory = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = nn.ModuleList(_CrossAttentionBlock(config) for _ in range(config.n_layers))
        self.out_norm = nn.LayerNorm(D)
        self.readout = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, config.num_classes))
        F_ = config.score_features
        if F_:
            self.score_proj = nn.Linear(F_, D)
            nn.init.zeros_(self.score_proj.weight)
            nn.init.zeros_(self.score_proj.bias)
            # skip path: every outcome logit starts as the sum of the scores (the beam log-prob,
            # plus the dense log-prob where read: the log of the product of the two
            # probabilities renormalised over the list), "none" at 0, so P(interaction)
            # starts monotone in that sum. Adam moves a weight by about the learning rate per
            # step, so a few hundred steps at 1e-3 cannot take a column far from its start;
            # on ML-1M a head whose dense column started at 0 ranked the plain beam's lists
            # worse than the beam, while the untrained sum ranks them 8% better (BENCHMARKS.md).
            self.score_skip = nn.Linear(F_, config.num_classes)
            with torch.no_grad():
                self.score_skip.weight.zero_()
                self.score_skip.bias.zero_()
                self.score_skip.weight[: len(config.outcomes)] = 1.0
            # and the learned part starts at 0, so the untrained head ranks by that sum
            # exactly; the readout's last layer still gets gradients from the first step
            nn.init.zeros_(self.readout[-1].weight)
            nn.init.zeros_(self.readout[-1].bias)

    @property
    def outcomes(self) -> list[str]:
        return self.config.outcomes

    def forward(
        self,
        history_states: FloatTensor,
        history_mask: LongTensor,
        candidate_embeds: FloatTensor,
        extra: FloatTensor | None = None,
        scores: FloatTensor | None = None,
    ) -> FloatTensor:
        """Logits over (outcomes + "none") for every candidate.

        Args:
            history_states: FloatTensor[B, T, H] the LM's last hidden states of the history.
            history_mask: LongTensor/BoolTensor[B, T], 1 for real history tokens.
            candidate_embeds: FloatTensor[B, C, L, H] input embeddings of each candidate's
                SID tokens (see :func:`candidate_embeddings`).
            extra: optional FloatTensor[B, C, E] per-candidate vectors (``E = extra_size``).
            scores: FloatTensor[B, C, F] retrieval scores (``F = score_features``; e.g.
                :func:`beam_score_features`); required exactly when ``score_features > 0``.

        Returns:
            FloatTensor[B, C, O + 1]; the last column is the "none" class.
        """
        cfg = self.config
        B, C = candidate_embeds.shape[:2]
        if candidate_embeds.shape[2:] != (cfg.num_levels, cfg.hidden_size):
            raise ValueError(
                f"candidate_embeds must be [B, C, L={cfg.num_levels}, H={cfg.hidden_size}], "
                f"got {tuple(candidate_embeds.shape)}"
            )
        if history_states.dim() != 3 or history_states.shape[-1] != cfg.hidden_size:
            raise ValueError(
                f"history_states must be [B, T, H={cfg.hidden_size}], "
                f"got {tuple(history_states.shape)}"
            )
        if history_mask.shape != history_states.shape[:2] or history_states.shape[0] != B:
            raise ValueError(
                f"history_mask {tuple(history_mask.shape)} must match history_states "
                f"{tuple(history_states.shape[:2])} and the candidates' batch size {B}"
            )
        dtype = self.query_proj.weight.dtype
        x = self.query_proj(self.query_norm(candidate_embeds.to(dtype).flatten(2)))  # [B, C, D]
        if extra is not None:
            if extra.shape != (B, C, cfg.extra_size):
                raise ValueError(
                    f"extra must be [B={B}, C={C}, E={cfg.extra_size}], got {tuple(extra.shape)}"
                )
            x = x + self.extra_proj(extra.to(dtype))
        if cfg.score_features:
            if scores is None or scores.shape != (B, C, cfg.score_features):
                got = None if scores is None else tuple(scores.shape)
                raise ValueError(
                    f"this head reads {cfg.score_features} retrieval score(s) per candidate: "
                    f"pass scores [B={B}, C={C}, F={cfg.score_features}], got {got}"
                )
            scores = scores.to(dtype)
            x = x + self.score_proj(scores)
        elif scores is not None:
            raise ValueError("this head was built with score_features=0; it takes no scores")
        memory = self.memory_proj(self.memory_norm(history_states.to(dtype)))  # [B, T, D]
        memory = torch.cat([self.null_memory.expand(B, 1, -1), memory], dim=1)
        keep = F.pad(history_mask.bool(), (1, 0), value=True)  # [B, 1 + T]
        for block in self.blocks:
            x = block(x, memory, keep)
        logits = self.readout(self.out_norm(x))
        if cfg.score_features:
            logits = logits + self.score_skip(scores)
        return logits

    # ------------------------------------------------------------------ artifacts
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` to directory ``path`` atomically."""
        save_artifact(path, self.config.to_dict(), self.state_dict())

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> RankingHead:
        """Load a head written by :meth:`save_pretrained` (e.g. ``runs/NAME/ranker``)."""
        config, state = load_artifact(
            path,
            what="a ranking head directory written by RankingHead.save_pretrained "
            "(train one with sid.ranking_training.train_ranker)",
            map_location=map_location,
        )
        head = cls(RankingHeadConfig.from_dict(config))
        head.load_state_dict(state)
        return head.to(map_location)


# --------------------------------------------------------------------------- LM access
def encode_history(lm, input_ids: LongTensor, attention_mask: LongTensor) -> FloatTensor:
    """Last hidden states [B, T, H] of ``lm.base_model`` over LEFT-padded histories.

    Same embeddings (PrefixMem included when attached) and position ids as the prefill of
    :func:`~sid.retrieval.constrained_beam_search`, so the states match the ones it returns.
    Used to train the head; serving gets the states from the beam search instead.
    """
    emb = lm.get_input_embeddings()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    out = lm.base_model(
        inputs_embeds=emb(input_ids),
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=False,
    )
    return out.last_hidden_state


def candidate_embeddings(lm, vocab: SIDVocab, codes: LongTensor) -> FloatTensor:
    """Input embeddings of candidates' SID tokens: codes [B, C, L] → [B, C, L, H].

    Each candidate's ``L`` tokens are embedded as one short sequence, so an attached
    PrefixMem adds its prefix vectors to them exactly as it does inside a history.
    """
    B, C, L = codes.shape
    ids = vocab.sid_token_ids(codes).view(B * C, L).to(lm.get_input_embeddings().weight.device)
    return lm.get_input_embeddings()(ids).view(B, C, L, -1)


def beam_score_features(
    beam_scores: FloatTensor, valid: BoolTensor, prior_scores: FloatTensor | None = None
) -> FloatTensor:
    """The head's retrieval features: beam log-probs [B, C] → FloatTensor[B, C, 1], or with
    the dense head's log-probs ``prior_scores`` [B, C] → FloatTensor[B, C, 2].

    Each is a log-softmax over the user's valid candidates (the log of that score's
    probability renormalised over the list), so a feature means the same whatever the list
    size or history length; 0 for missing candidates.
    """
    valid = valid.to(beam_scores.device)

    def renormalised(x: FloatTensor) -> FloatTensor:
        f = x.float().where(valid, float("-inf")).log_softmax(-1).clamp_min(-30.0)
        return f.where(valid, 0.0).nan_to_num(0.0)

    columns = [renormalised(beam_scores)]
    if prior_scores is not None:
        if prior_scores.shape != beam_scores.shape:
            raise ValueError(
                f"prior_scores {tuple(prior_scores.shape)} must match beam_scores "
                f"{tuple(beam_scores.shape)}"
            )
        columns.append(renormalised(prior_scores.to(beam_scores.device)))
    return torch.stack(columns, dim=-1)


def history_inputs(
    vocab: SIDVocab, item_codes: LongTensor, items: LongTensor, outcomes: LongTensor
) -> tuple[LongTensor, LongTensor]:
    """Token ids of histories ``<o_1> s_1 … <o_n> s_n``, LEFT-padded.

    Args:
        item_codes: LongTensor[N, L] SIDs of the catalogue (``SemanticIDs.codes``).
        items: LongTensor[B, M] item indices, right-aligned, -1 = padding (on the left).
        outcomes: LongTensor[B, M] outcome indices into ``vocab.outcomes``.

    Returns:
        (input_ids, attention_mask), both LongTensor[B, M * (L + 1)]; padding id 0.
    """
    valid = items >= 0
    B, M = items.shape
    tok = vocab.item_token_ids(item_codes[items.clamp_min(0)], outcomes.clamp_min(0))  # [B, M, L+1]
    mask = valid[..., None].expand_as(tok)
    return tok.where(mask, 0).reshape(B, -1), mask.reshape(B, -1).long()


# --------------------------------------------------------------------------- serving
@dataclass
class RankedOutput:
    """Ranked candidates of ``B`` users, ``K`` each, sorted by ``final_scores`` descending.

    items: LongTensor[B, K] item indices, -1 (last) where fewer than K candidates exist.
    rank_scores: FloatTensor[B, K] ``sum_o w_o * P(o)`` (-inf for missing candidates).
    beam_scores: FloatTensor[B, K] the beam search's summed log-probabilities (-inf missing).
    final_scores: FloatTensor[B, K] the sort key: ``(1 - beam_weight) * rank_scores +
        beam_weight * beam_prob`` where beam_prob renormalises exp(beam score) over the
        user's candidates (-inf for missing).
    probs: FloatTensor[B, K, O + 1] P(outcome) per candidate, last column P("none").
    outcome_labels: the outcome labels of ``probs``' columns, then "none".
    retrieval: the :class:`~sid.retrieval.BeamSearchOutput` the candidates came from (its
        own, retrieval-only order), or None when ranking candidates given directly.
    """

    items: LongTensor
    rank_scores: FloatTensor
    beam_scores: FloatTensor
    final_scores: FloatTensor
    probs: FloatTensor
    outcome_labels: list[str]
    retrieval: object | None = None


def _weight_vector(head: RankingHead, outcome_weights: dict[str, float] | None) -> FloatTensor:
    """[O + 1] weights over the head's classes ("none" gets 0)."""
    outcomes = head.config.outcomes
    if outcome_weights is None:
        outcome_weights = {o: w for o, w in DEFAULT_OUTCOME_WEIGHTS.items() if o in outcomes}
        # another dataset's labels: any interaction counts, i.e. 1 - P(none)
        outcome_weights = outcome_weights or dict.fromkeys(outcomes, 1.0)
    unknown = sorted(set(outcome_weights) - set(outcomes))
    if unknown:
        raise ValueError(
            f"outcome_weights name unknown outcomes {unknown}; the head knows {outcomes}"
        )
    return torch.tensor([float(outcome_weights.get(o, 0.0)) for o in outcomes] + [0.0])


@torch.no_grad()
def rank_candidates(
    head: RankingHead,
    lm,
    vocab: SIDVocab,
    semantic_ids,
    history_states: FloatTensor,
    history_mask: LongTensor,
    items: LongTensor,
    *,
    beam_scores: FloatTensor | None = None,
    outcome_weights: dict[str, float] | None = None,
    beam_weight: float = DEFAULT_BEAM_WEIGHT,
    top_k: int | None = None,
    extra: FloatTensor | None = None,
    prior_scores: FloatTensor | None = None,
) -> RankedOutput:
    """Score given candidates with the head and sort them; no LM forward of the history.

    Args:
        history_states: FloatTensor[B, T, H] (e.g. ``BeamSearchOutput.history_states``).
        history_mask: LongTensor[B, T].
        items: LongTensor[B, C] candidate item indices, -1 for missing candidates.
        beam_scores: FloatTensor[B, C] retrieval log-probabilities (needed if beam_weight > 0).
        outcome_weights: ``{label: w}``; default ``{"like": 1.0, "watch": 0.3}`` restricted to
            the head's labels (all 1.0 if it knows neither).
        beam_weight: in [0, 1], share of the renormalised beam probability in the final score
            (default :data:`DEFAULT_BEAM_WEIGHT`; 0 ranks by the head alone).
        top_k: keep the best ``top_k`` (default: all C).
        extra: optional FloatTensor[B, C, E] per-candidate vectors for the head.
        prior_scores: FloatTensor[B, C] the dense head's log-probs of the candidates
            (``BeamSearchOutput.prior_scores``); needed by a head with ``score_features=2``.

    Returns:
        :class:`RankedOutput`; ``final_scores`` sorted descending, missing candidates last.
    """
    items = torch.as_tensor(items, dtype=torch.long)
    if items.dim() != 2 or items.shape[0] != history_states.shape[0]:
        raise ValueError(
            f"items must be [B={history_states.shape[0]}, C], got {tuple(items.shape)}"
        )
    if not 0.0 <= beam_weight <= 1.0:
        raise ValueError(f"beam_weight must be in [0, 1], got {beam_weight}")
    if head.config.score_features and beam_scores is None:
        raise ValueError(
            "this head reads the retrieval scores: pass beam_scores (the beam log-probabilities)"
        )
    if head.config.score_features >= 2 and prior_scores is None:
        raise ValueError(
            "this head reads the dense head's scores too: pass prior_scores (search with "
            "prior= the run's dense head, one outcome and one slot per user)"
        )
    if beam_weight > 0 and beam_scores is None:
        raise ValueError(
            f"beam_weight={beam_weight} blends in the beam probability: pass beam_scores, or "
            "beam_weight=0 to rank by the head alone"
        )
    B, C = items.shape
    k = C if top_k is None else int(top_k)
    if not 1 <= k <= C:
        raise ValueError(f"top_k={top_k} must be in [1, number of candidates={C}]")
    codes_table = semantic_ids.codes
    if bool((items >= codes_table.shape[0]).any()):
        raise ValueError(
            f"items hold index {int(items.max())} >= catalogue size {codes_table.shape[0]}"
        )
    device = history_states.device
    valid = (items >= 0).to(device)
    codes = codes_table.to(items.device)[items.clamp_min(0)]  # [B, C, L]
    features = None
    if head.config.score_features:
        dense = prior_scores if head.config.score_features >= 2 else None
        features = beam_score_features(beam_scores.to(device), valid, dense)
    was_training = head.training
    head.eval()
    try:
        embeds = candidate_embeddings(lm, vocab, codes)
        kwargs = {} if features is None else {"scores": features}
        logits = head(history_states, history_mask, embeds, extra, **kwargs)
    finally:
        head.train(was_training)
    probs = logits.float().softmax(-1).where(valid[..., None], 0.0)  # [B, C, O + 1]
    weights = _weight_vector(head, outcome_weights).to(device)
    neg_inf = torch.tensor(float("-inf"), device=device)
    rank_scores = (probs @ weights).where(valid, neg_inf)
    if beam_scores is None:
        beam_scores = torch.full((B, C), float("nan"), device=device)
    beam_scores = beam_scores.to(device=device, dtype=torch.float32)
    final = rank_scores
    if beam_weight > 0:
        beam_prob = beam_scores.where(valid, neg_inf).softmax(-1).nan_to_num(0.0)
        final = (1 - beam_weight) * rank_scores + beam_weight * beam_prob
    final = final.where(valid, neg_inf)
    # stable sort: -inf (missing) candidates stay last, in their input order
    final, order = final.sort(dim=-1, descending=True, stable=True)
    order, final = order[:, :k], final[:, :k]
    return RankedOutput(
        items=items.to(device).gather(1, order).where(final > neg_inf, -1),
        rank_scores=rank_scores.gather(1, order),
        beam_scores=beam_scores.gather(1, order),
        final_scores=final,
        probs=probs.gather(1, order[..., None].expand(-1, -1, probs.shape[-1])),
        outcome_labels=[*head.config.outcomes, NONE_LABEL],
    )


@torch.no_grad()
def retrieve_and_rank(
    lm,
    vocab: SIDVocab,
    semantic_ids,
    head: RankingHead,
    input_ids: LongTensor,
    attention_mask: LongTensor,
    *,
    beam: BeamSearchConfig | None = None,
    exclude_items: LongTensor | None = None,
    outcome_weights: dict[str, float] | None = None,
    beam_weight: float = DEFAULT_BEAM_WEIGHT,
    top_k: int | None = None,
    prior=None,
) -> RankedOutput:
    """Retrieve candidates with ONE constrained beam search, then rank them with the head.

    The head reads the beam search's own prefill states (``history_states``); the history is
    not encoded again. ``beam``: the search's options (:class:`~sid.retrieval.BeamSearchConfig`,
    default ``BeamSearchConfig()``; its states are always kept); ``input_ids`` LEFT-padded ``[B, T]``; ``exclude_items``
    ``[B, M]`` -1 padded; the rest as :func:`rank_candidates`, where ``top_k`` is how many
    ranked items to return out of the beam's candidates (default all of them). ``prior``:
    the run's dense head, for ``beam.prior_weight > 0`` and for a head that reads the dense
    scores (``score_features=2``).
    ``result.retrieval`` keeps the retrieval-only order for side-by-side evaluation.
    """
    beam = BeamSearchConfig() if beam is None else beam
    beams = replace(beam, return_states=True).search(
        lm, vocab, semantic_ids.trie, input_ids, attention_mask, exclude_items, prior=prior
    )
    ranked = rank_candidates(
        head,
        lm,
        vocab,
        semantic_ids,
        beams.history_states,
        beams.history_mask.to(beams.history_states.device),
        beams.items,
        beam_scores=beams.scores,
        outcome_weights=outcome_weights,
        beam_weight=beam_weight,
        top_k=top_k,
        prior_scores=beams.prior_scores,
    )
    ranked.retrieval = beams
    return ranked
