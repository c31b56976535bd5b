"""Batched trie-constrained, outcome-conditioned beam search over semantic IDs.

A user's history (SID and outcome tokens, left-padded) is prefilled once; the desired
outcome token is appended (one cache branch per outcome when a budget is asked for); then
one KV-cached step per SID level decodes ``num_beams`` prefixes per (user, outcome).

Each step computes logits only for the current level's contiguous token range
(``hidden @ W_out[level_start : level_start + K_l].T``), masks codes that are not valid
children of the beam's prefix in the :class:`~sid.codes.PrefixTrie`, and normalises with a
log-softmax over the valid children only, so a beam's score is the summed log-probability of
its SID under the trie: ``sum_l log p(c_l | history, outcome, c_<l, c_l valid)``.

The history's KV cache is held once per user, never once per beam: all beams of a user are
fed as parallel query positions of that user's row under a 4D tree mask (each beam sees the
history, its outcome token and its own ancestors). With eager/SDPA attention this replaces the
``num_beams``-fold cache copy and per-step gather of a textbook beam search; other attention
implementations fall back to that textbook layout (same results).

Everything is tensor code over users × outcomes × beams; the only Python loops run over the
SID levels and the (few) outcomes. ``lm.generate`` and ``lm.generation_config`` are not used.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import BoolTensor, FloatTensor, LongTensor
from transformers import DynamicCache

from sid.vocab import SIDVocab


@dataclass
class BeamSearchOutput:
    """Result of :func:`constrained_beam_search` for ``B`` users and ``K`` candidates each.

    items: LongTensor[B, K] item indices (into ``SemanticIDs.item_ids``), -1 where fewer than
        K candidates exist.
    codes: LongTensor[B, K, L] the candidates' SIDs, -1 rows for missing candidates.
    scores: FloatTensor[B, K] summed log-probabilities, sorted descending (-inf for missing).
    outcomes: LongTensor[B, K] index into ``vocab.outcomes`` of the outcome each candidate was
        decoded under (-1 when no outcome token was appended, or for missing candidates).
    history_states: FloatTensor[B, T, H] last hidden states of the history prefill (for the
        ranking head), or None when ``return_states=False``.
    history_mask: LongTensor[B, T] the attention mask of the history.
    prior_scores: FloatTensor[B, K] the dense head's log-probability of each candidate (its
        log-softmax over the whole catalogue; -inf for missing candidates) when the search
        was given a ``prior`` and decoded one query per user (one outcome, one slot), else
        None. The ranking head reads it as a feature (``RankingHeadConfig.score_features=2``).
    """

    items: LongTensor
    codes: LongTensor
    scores: FloatTensor
    outcomes: LongTensor
    history_states: FloatTensor | None
    history_mask: LongTensor
    prior_scores: FloatTensor | None = None


# --------------------------------------------------------------------------- model access
def _embed(lm, ids: LongTensor, prefix_codes: LongTensor | None) -> FloatTensor:
    """Input embeddings [N, S, H]; PrefixMem's wrapper gets the beam's decoded prefix."""
    emb = lm.get_input_embeddings()
    if getattr(emb, "accepts_prefix_codes", False):
        return emb(ids, prefix_codes=prefix_codes)
    return emb(ids)


def _forward(
    lm,
    ids: LongTensor,
    mask: LongTensor,
    positions: LongTensor,
    cache: DynamicCache | None,
    prefix_codes: LongTensor | None = None,
) -> FloatTensor:
    """Last hidden states [N, S, H] of ``lm.base_model`` (never the full-vocab head)."""
    return _base_forward(lm, _embed(lm, ids, prefix_codes), mask, positions, cache)


def _base_forward(lm, x: FloatTensor, mask, positions: LongTensor, cache) -> FloatTensor:
    """inputs_embeds x [N, S, H] → last hidden states [N, S, H]; mask 2D [N, C+S] or 4D."""
    base = lm.base_model
    out = base(
        inputs_embeds=x,
        attention_mask=mask,
        position_ids=positions,
        use_cache=cache is not None,
        **{_cache_kwarg(type(base)): cache},
    )
    return out.last_hidden_state


@functools.cache
def _cache_kwarg(model_cls: type) -> str:
    """``cache`` where the model's forward takes it (transformers >= 5.24 renamed
    ``past_key_values``, deprecated until 5.40), else ``past_key_values``."""
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _level_heads(lm, vocab: SIDVocab) -> list[tuple[FloatTensor, FloatTensor | None]]:
    """Per level: (W_l [K_l, H] float32, bias_l [K_l] or None), rows of the output head."""
    head = lm.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(
            f"{type(lm).__name__} has no output embedding matrix (get_output_embeddings() is "
            f"{head!r}); constrained_beam_search needs a causal LM with a linear head"
        )
    w, b = head.weight, getattr(head, "bias", None)
    heads = []
    for start, k in zip(vocab.level_start, vocab.codebook_sizes, strict=True):
        if start + k > w.shape[0]:
            raise ValueError(
                f"the model's output head has {w.shape[0]} rows but SID tokens reach id "
                f"{start + k - 1}: call vocab.resize_model(model) after add_to_tokenizer"
            )
        heads.append(
            (w[start : start + k].float(), None if b is None else b[start : start + k].float())
        )
    return heads


def _level_logits(h: FloatTensor, head: tuple[FloatTensor, FloatTensor | None]) -> FloatTensor:
    """h [N, H] → logits [N, K_l] of one level's token range."""
    w, b = head
    logits = h.float() @ w.T
    return logits if b is None else logits + b


def _masked_log_softmax(logits: FloatTensor, allowed: BoolTensor) -> FloatTensor:
    """log_softmax over allowed entries only; -inf elsewhere (and for rows with none allowed)."""
    neg = torch.finfo(logits.dtype).min
    logp = F.log_softmax(logits.masked_fill(~allowed, neg), dim=-1)
    return logp.masked_fill(~allowed, float("-inf"))


# --------------------------------------------------------------------------- input checks
def _check_inputs(vocab, trie, input_ids, attention_mask) -> None:
    if not vocab.is_bound:
        raise ValueError("vocab is not bound to token ids: call vocab.add_to_tokenizer first")
    if trie.num_levels != vocab.num_levels or list(trie.codebook_sizes) != list(
        vocab.codebook_sizes
    ):
        raise ValueError(
            f"trie codebook sizes {list(trie.codebook_sizes)} differ from the vocab's "
            f"{vocab.codebook_sizes}: build both from the same SemanticIDs"
        )
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} must both be [B, T]"
        )


def _outcome_plan(vocab, outcome, num_beams, top_k):
    """→ (labels, counts or None, beams per branch, K returned). ``vocab=None`` checks the
    shape of the request only (labels are checked once a vocabulary is at hand)."""
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if isinstance(outcome, dict):
        if not outcome:
            raise ValueError("outcome budget dict is empty; pass e.g. {'like': 15, 'watch': 5}")
        labels = list(outcome)
        counts = [int(outcome[o]) for o in labels]
        if any(c < 0 for c in counts):
            raise ValueError(f"outcome budget counts must be >= 0, got {outcome}")
        total = sum(counts)
        if total < 1:
            raise ValueError(f"outcome budget {outcome} asks for no candidates at all")
        if vocab is not None:
            for o in labels:
                vocab.outcome_id(o)
        if top_k is not None and top_k != total:
            raise ValueError(
                f"top_k={top_k} disagrees with the outcome budget {outcome} (total {total}); "
                "leave top_k=None with a budget"
            )
        # enough beams per outcome to refill what earlier outcomes already took
        return labels, counts, max(num_beams, total), total
    k = num_beams if top_k is None else int(top_k)
    if k < 1 or k > num_beams:
        raise ValueError(f"top_k={top_k} must be in [1, num_beams={num_beams}]")
    if outcome is None:
        return [None], None, num_beams, k
    if isinstance(outcome, str):
        if vocab is not None:
            vocab.outcome_id(outcome)
        return [outcome], None, num_beams, k
    raise ValueError(f"outcome must be None, a label or a {{label: count}} dict, got {outcome!r}")


@dataclass(frozen=True)
class BeamSearchConfig:
    """The options of one :func:`constrained_beam_search`, validated when built; the ONE place
    their defaults live (the function's keyword defaults are read from here).

    num_beams: beams per (user, outcome).
    top_k: candidates returned per user (None: ``num_beams``; with a budget: its total).
    outcome: None (decode right after the history), a label (append its token) or a budget
        ``{"like": 15, "watch": 5}`` (candidates per outcome).
    return_states: also return the history's last hidden states (for the ranking head).
    slots: query slots decoded per (user, outcome) (None: all the model's ``vocab.slots``;
        1: the next item only).
    prior_weight: weight of the dense head's item log-probabilities inside the search (0:
        none). A prefix is then ranked at every level by its SID log-probability plus
        ``prior_weight`` times the log of the dense probability mass of the (not excluded)
        items under it, so the beam keeps prefixes where the dense head puts mass and drops
        those whose items are all excluded; an item's final score is its SID log-probability
        plus ``prior_weight`` times its dense log-probability.

    The per-batch ``exclude_items`` tensor and the dense head are data, not options:
    :meth:`search` takes them.
    """

    num_beams: int = 20
    top_k: int | None = None
    outcome: str | dict[str, int] | None = None
    return_states: bool = True
    slots: int | None = None
    prior_weight: float = 0.0

    def __post_init__(self):
        if isinstance(self.outcome, dict):
            object.__setattr__(self, "outcome", dict(self.outcome))  # the caller's dict may change
        _outcome_plan(None, self.outcome, self.num_beams, self.top_k)
        resolve_slots(self.slots, None)
        _check_prior_weight(self.prior_weight)

    @property
    def num_candidates(self) -> int:
        """``K``: columns of the result (the budget total, ``top_k`` or ``num_beams``)."""
        return _outcome_plan(None, self.outcome, self.num_beams, self.top_k)[3]

    def search(
        self,
        lm,
        vocab: SIDVocab,
        trie,
        input_ids: LongTensor,
        attention_mask: LongTensor,
        exclude_items: LongTensor | None = None,
        prior=None,
    ) -> BeamSearchOutput:
        """:func:`constrained_beam_search` with these options (``prior``: the dense head
        that ``prior_weight`` weighs)."""
        return constrained_beam_search(
            lm,
            vocab,
            trie,
            input_ids,
            attention_mask,
            num_beams=self.num_beams,
            top_k=self.top_k,
            outcome=self.outcome,
            exclude_items=exclude_items,
            return_states=self.return_states,
            slots=self.slots,
            prior=prior,
            prior_weight=self.prior_weight,
        )


def _check_prior_weight(weight) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"prior_weight must be a number >= 0, got {weight!r}")
    if weight == float("inf"):
        raise ValueError("prior_weight must be finite (use the dense head alone instead)")


def prefix_log_marginals(item_logp: FloatTensor, trie) -> list[FloatTensor]:
    """Item log-probabilities [G, N] → per level l the log of the mass under each child
    reached by choosing code l: [G, n_nodes_{l+1}] for l < L - 1, then [G, N] (the items
    themselves). -inf where every item under a node is -inf (e.g. excluded)."""
    G, N = item_logp.shape
    out = []
    for level in range(1, trie.num_levels):
        idx = trie.item_nodes[:, level].to(item_logp.device).expand(G, N)
        n = trie.num_nodes[level]
        top = torch.full((G, n), float("-inf"), device=item_logp.device)
        top = top.scatter_reduce(1, idx, item_logp, reduce="amax", include_self=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        mass = torch.zeros(G, n, device=item_logp.device)
        mass = mass.scatter_add_(1, idx, (item_logp - top.gather(1, idx)).exp())
        out.append(mass.log() + top)
    out.append(item_logp)
    return out


def resolve_slots(slots, vocab) -> int:
    """→ the number of slots to decode (None: the vocabulary's)."""
    if slots is None:
        return 1 if vocab is None else vocab.slots
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an int >= 1 (or None: the model's), got {slots!r}")
    if vocab is not None and slots > vocab.slots:
        raise ValueError(
            f"slots={slots}, but the model was trained with {vocab.slots} slot(s) "
            f"(train.py --slots); ask for at most {vocab.slots}"
        )
    return slots


# --------------------------------------------------------------------------- KV strategies
def _shared_history_ok(lm) -> bool:
    """Custom 4D additive masks work with the eager and SDPA attention implementations."""
    impl = getattr(lm.config, "_attn_implementation", None) or "eager"
    return impl in ("eager", "sdpa")


class _SharedHistoryDecoder:
    """Decode with ONE copy of each user's history in the KV cache.

    All beams of a user are fed as parallel query positions of that user's row (tree
    attention): a beam's level-l token attends to the real history tokens, its own outcome
    token and its ancestors' tokens, expressed by a 4D additive mask. Nothing in the cache is
    ever copied or reordered; it only grows by ``n_out * width`` entries per level, where a
    beam-expanded cache would hold ``num_beams`` copies of the history and gather them at
    every step.
    """

    def __init__(self, lm, cache: DynamicCache, mask: LongTensor, n_out: int):
        self.lm, self.cache, self.n_out = lm, cache, n_out
        self.B = mask.shape[0]
        self.dtype = lm.dtype
        self.visible = mask.bool()  # [G, C0] keys every query of group g may see
        self.next_pos = mask.sum(-1)  # [B] position of the next token
        if n_out > 1:
            self.visible = self.visible.repeat_interleave(n_out, dim=0)
        self.cache_len = mask.shape[1]
        self.anc = None  # [G, width, l] slot of each beam's ancestor at fed levels 0..l-1
        self.block_start: list[int] = []  # cache index of each fed level's block
        self.block_width: list[int] = []  # beams per group in each fed level's block

    def _attend(self, ids, allowed, prefix_codes, at=None):
        """ids [B, Q] fed tokens; allowed BoolTensor [B, Q, cache_len + Q] → hidden [B, Q, H].
        `at` [B]: their position (default: the next one)."""
        B, Q = ids.shape
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=ids.device)
        bias = bias.masked_fill(~allowed, torch.finfo(self.dtype).min)[:, None]
        positions = (self.next_pos if at is None else at)[:, None].expand(B, Q)
        if prefix_codes is not None and getattr(
            self.lm.get_input_embeddings(), "accepts_prefix_codes", False
        ):
            # one prefix per beam: embed beam tokens as a column, then lay them out per user
            x = _embed(self.lm, ids.reshape(-1, 1), prefix_codes).view(B, Q, -1)
        else:
            x = _embed(self.lm, ids, None)
        self.cache_len += Q
        return _base_forward(self.lm, x, bias, positions, self.cache)

    def branch_outcomes(self, outcome_tok: LongTensor) -> FloatTensor:
        """Feed the n_out outcome tokens side by side; outcome o sees the history and itself."""
        B, n_o = self.B, self.n_out
        own = torch.eye(n_o, dtype=torch.bool, device=outcome_tok.device).expand(B, n_o, n_o)
        hist = self.visible.view(B, n_o, -1)
        allowed = torch.cat([hist, own], dim=-1)  # [B, n_o, C0 + n_o]
        h = self._attend(outcome_tok.expand(B, n_o), allowed, None)
        self.visible = allowed.reshape(B * n_o, -1)
        self.next_pos = self.next_pos + 1
        return h.reshape(B * n_o, -1)

    def branch_slots(self, slot_tok: LongTensor) -> FloatTensor:
        """Feed the slot tokens ``<next_2>`` … ``<next_k>`` [k - 1] after each group's outcome
        token, at the outcome token's position (as in training); each sees its group's keys
        and itself. The groups become (user, outcome, slot), slot 1 being the group as it was
        (no token). → the slot tokens' hidden states [B, n_out, k - 1, H]."""
        B, n_o = self.B, self.n_out
        k1 = slot_tok.shape[0]
        Q = n_o * k1
        C0 = self.visible.shape[1]
        own = torch.eye(Q, dtype=torch.bool, device=slot_tok.device).expand(B, Q, Q)
        hist = self.visible.view(B, n_o, 1, C0).expand(B, n_o, k1, C0).reshape(B, Q, C0)
        allowed = torch.cat([hist, own], dim=-1)  # [B, Q, C0 + Q]
        h = self._attend(slot_tok.repeat(n_o).expand(B, Q), allowed, None, at=self.next_pos - 1)
        vis = torch.zeros(B, n_o, k1 + 1, C0 + Q, dtype=torch.bool, device=slot_tok.device)
        vis[..., :C0] = self.visible.view(B, n_o, 1, C0)
        vis[:, :, 1:, C0:] = own[0].view(1, n_o, k1, Q)
        self.visible = vis.view(B * n_o * (k1 + 1), C0 + Q)
        self.n_out = n_o * (k1 + 1)
        return h.view(B, n_o, k1, -1)

    def step(self, tok, parent, rows, prev_codes) -> FloatTensor:
        """tok/parent [G, W] the new beams' tokens and parent slots → hidden [G * W, H]."""
        G, W = tok.shape
        B, n_o = self.B, self.n_out
        dev = tok.device
        slot = torch.arange(W, device=dev).expand(G, W)
        if self.anc is None:
            anc = slot[:, :, None]
        else:
            anc = torch.cat(
                [
                    self.anc.gather(1, parent[:, :, None].expand(-1, -1, self.anc.shape[2])),
                    slot[:, :, None],
                ],
                2,
            )
        self.anc = anc
        self.block_start.append(self.cache_len)
        self.block_width.append(W)
        start = torch.tensor(self.block_start, device=dev)
        widths = torch.tensor(self.block_width, device=dev)
        o = torch.arange(G, device=dev) % n_o
        key = start + o[:, None, None] * widths + anc  # [G, W, l + 1] cache index of ancestors
        Q = n_o * W
        allowed = torch.zeros(B, Q, self.cache_len + Q, dtype=torch.bool, device=dev)
        C0 = self.visible.shape[1]
        allowed[:, :, :C0] = (
            self.visible.view(B, n_o, 1, C0).expand(B, n_o, W, C0).reshape(B, Q, C0)
        )
        allowed.scatter_(2, key.view(B, Q, -1), True)
        h = self._attend(tok.reshape(B, Q), allowed, prev_codes)
        self.next_pos = self.next_pos + 1
        return h.reshape(G * W, -1)


class _ExpandedDecoder:
    """Decode with the cache expanded to one row per beam, gathered by parent at each step.

    The textbook layout (what ``generate`` does); used for attention implementations that
    do not take custom 4D masks (e.g. flash attention).
    """

    def __init__(self, lm, cache: DynamicCache, mask: LongTensor, n_out: int):
        self.lm, self.cache, self.n_out = lm, cache, n_out
        self.mask = mask  # [rows, S] attention mask of each cache row

    def _feed(self, tok, prefix_codes):
        positions = self.mask.sum(-1, keepdim=True)
        ones = torch.ones(self.mask.shape[0], 1, dtype=torch.long, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], 1)
        return _forward(self.lm, tok, self.mask, positions, self.cache, prefix_codes)[:, -1]

    def branch_outcomes(self, outcome_tok: LongTensor) -> FloatTensor:
        B, n_o = self.mask.shape[0], self.n_out
        branch = torch.arange(B, device=self.mask.device).repeat_interleave(n_o)
        self.cache.reorder_cache(branch)
        self.mask = self.mask[branch]
        return self._feed(outcome_tok.repeat(B)[:, None], None)

    def step(self, tok, parent, rows, prev_codes) -> FloatTensor:
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        return self._feed(tok.reshape(-1, 1), prev_codes)


# --------------------------------------------------------------------------- beam search
@torch.no_grad()
def constrained_beam_search(
    lm,
    vocab: SIDVocab,
    trie,
    input_ids: LongTensor,
    attention_mask: LongTensor,
    *,
    num_beams: int = BeamSearchConfig.num_beams,
    top_k: int | None = BeamSearchConfig.top_k,
    outcome: str | dict[str, int] | None = BeamSearchConfig.outcome,
    exclude_items: LongTensor | None = None,
    return_states: bool = BeamSearchConfig.return_states,
    slots: int | None = BeamSearchConfig.slots,
    prior=None,
    prior_weight: float = BeamSearchConfig.prior_weight,
) -> BeamSearchOutput:
    """Decode the top SIDs of every user under the prefix trie.

    The options are :class:`BeamSearchConfig`'s (its defaults); ``config.search(...)`` calls
    this function with a config's values.

    Args:
        lm: a causal LM (``base_model``, ``get_input_embeddings``, ``get_output_embeddings``)
            whose vocabulary holds ``vocab``'s tokens.
        vocab: bound :class:`SIDVocab`.
        trie: :class:`~sid.codes.PrefixTrie` of the catalogue (same codebook sizes as vocab).
        input_ids: LongTensor[B, T] histories, LEFT-padded.
        attention_mask: LongTensor[B, T], 1 for real tokens.
        num_beams: beams per (user, outcome); the result holds at most this many per outcome.
        top_k: candidates returned per user (default ``num_beams``); must be <= num_beams.
        outcome: None — decode right after ``input_ids`` (which may end with an outcome
            token); a label — append that outcome token; a budget ``{"like": 15, "watch": 5}``
            — decode under each outcome (one shared history prefill, the cache branched per
            outcome) and return that many per outcome. An item proposed under several
            outcomes is kept once, under the outcome listed first, and the later outcome is
            refilled from its next-best beams. Beams per outcome are
            ``max(num_beams, sum(budget))`` so that counts are met whenever the catalogue
            (minus excluded items) allows.
        exclude_items: LongTensor[B, M] item indices never to return (e.g. the history), -1
            padded. They are filtered out at the last level after normalisation, so the
            scores of other items do not depend on the exclude list.
        return_states: also return the history's last hidden states [B, T, H].
        slots: query slots per (user, outcome), None: all of ``vocab.slots``. Slot 1 decodes
            right after the outcome token, slot j >= 2 after ``<o> <next_j>``: the cache
            holds the history once, the k - 1 slot tokens are fed side by side in one step,
            and every slot decodes its own ``num_beams`` beams under the trie in the same
            tree-masked steps. The slots' lists are merged per (user, outcome), an item found
            by several slots once, scored by the slots' mixture ``log(mean_j p_j(item))``
            (a slot that did not return it counts 0), and the best ``num_beams`` kept.
        prior: the dense head (:class:`~sid.dense.DenseRetrieval`, anything with
            ``scores(h) -> [..., N]``) whose log-softmax over the catalogue, read from each
            group's query state (where decoding starts: the outcome token, or a slot token),
            is the prior that ``prior_weight`` weighs; needed when ``prior_weight > 0``. Given
            with one query per user, its log-probabilities of the returned items come back as
            ``prior_scores`` (also with ``prior_weight=0``).
        prior_weight: see :class:`BeamSearchConfig`. With a prior, ``scores`` are
            ``SID log-prob + prior_weight * dense log-prob`` of each item.

    Returns:
        :class:`BeamSearchOutput` with ``K = top_k`` (or the budget total) columns, sorted by
        score; every returned item is a real catalogue item and no item appears twice.
    """
    input_ids = torch.as_tensor(input_ids)
    attention_mask = torch.as_tensor(attention_mask)
    _check_inputs(vocab, trie, input_ids, attention_mask)
    labels, counts, nb, k_out = _outcome_plan(vocab, outcome, num_beams, top_k)
    n_slots = resolve_slots(slots, vocab)
    _check_prior_weight(prior_weight)
    if prior_weight > 0 and prior is None:
        raise ValueError(
            f"prior_weight={prior_weight} weighs the dense head's scores inside the search: "
            "pass prior= the run's dense head (train.py --dense), or prior_weight=0"
        )
    if n_slots > 1 and not _shared_history_ok(lm):
        from sid.training import check_slot_attention

        check_slot_attention(getattr(lm.config, "_attn_implementation", None))
    device = input_ids.device
    if trie.node_child[0].device != device:
        trie = trie.to(device)
    B, T = input_ids.shape
    L = vocab.num_levels
    n_items = int(trie.item_nodes.shape[0])
    mask = attention_mask.to(device=device, dtype=torch.long)
    if labels[0] is None and B > 0 and (T == 0 or not bool((mask[:, -1] == 1).all())):
        raise ValueError(
            "every history must end with a real token: histories must be LEFT-padded "
            "(attention_mask[:, -1] == 1) — or pass an outcome to append"
        )
    excluded = None
    if exclude_items is not None:
        exclude_items = torch.as_tensor(exclude_items, device=device, dtype=torch.long)
        if exclude_items.dim() != 2 or exclude_items.shape[0] != B:
            raise ValueError(
                f"exclude_items must be [B={B}, M] (-1 padded), got {tuple(exclude_items.shape)}"
            )
        if bool((exclude_items >= n_items).any()):
            raise ValueError(
                f"exclude_items holds item index {int(exclude_items.max())} >= catalogue size "
                f"{n_items}"
            )
        excluded = torch.zeros(B, n_items + 1, dtype=torch.bool, device=device)
        excluded.scatter_(1, exclude_items.where(exclude_items >= 0, n_items), True)
        excluded = excluded[:, :n_items]

    was_training = lm.training
    lm.eval()
    try:
        heads = _level_heads(lm, vocab)
        n_out = len(labels)
        G = B * n_out  # decoding groups, g = b * n_out + o
        ids = input_ids.to(device)
        if n_out == 1 and labels[0] is not None:
            # one outcome: append its token to the history and prefill both at once
            tok = torch.full((B, 1), vocab.outcome_id(labels[0]), dtype=torch.long, device=device)
            ids = torch.cat([ids, tok], dim=1)
            mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        cache = DynamicCache(config=lm.config)
        if ids.shape[1] > 0:
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            hidden = _forward(lm, ids, mask, positions, cache)
            last = hidden[:, -1]  # [B, H]
        else:  # no history at all (cold start): the outcome branches start from scratch
            width_h = lm.config.get_text_config().hidden_size
            hidden = torch.zeros(B, 0, width_h, device=device, dtype=lm.dtype)
            last = None
        history_states = hidden[:, :T] if return_states else None
        decoder_cls = _SharedHistoryDecoder if _shared_history_ok(lm) else _ExpandedDecoder
        decoder = decoder_cls(lm, cache, mask, n_out)
        if n_out > 1:
            outcome_tok = torch.tensor([vocab.outcome_id(o) for o in labels], device=device)
            last = decoder.branch_outcomes(outcome_tok)  # [G, H]
        if n_slots > 1:
            if last is None:
                raise ValueError("slot decoding needs a history or an outcome token to follow")
            slot_tok = torch.tensor(
                [vocab.slot_id(j) for j in range(2, n_slots + 1)], device=device
            )
            h_slots = decoder.branch_slots(slot_tok)  # [B, n_out, k - 1, H]
            last = torch.cat([last.view(B, n_out, 1, -1), h_slots], 2).reshape(-1, last.shape[-1])
            G = B * n_out * n_slots  # groups g = (b * n_out + o) * k + slot

        marginals, item_logp = None, None
        if prior is not None and (prior_weight > 0 or G == B):
            if last is None:
                raise ValueError("a dense prior needs a history or an outcome token to follow")
            item_logp = F.log_softmax(prior.scores(last).float(), dim=-1)  # [G, N]
            if item_logp.shape[1] != n_items:
                raise ValueError(
                    f"the prior scores {item_logp.shape[1]} items, the trie holds {n_items}"
                )
            if excluded is not None:
                user = torch.div(torch.arange(G, device=device), G // B, rounding_mode="floor")
                item_logp = item_logp.masked_fill(excluded[user], float("-inf"))
            if prior_weight > 0:
                marginals = [prior_weight * m for m in prefix_log_marginals(item_logp, trie)]
        nodes = torch.zeros(G, dtype=torch.long, device=device)  # [G * width]
        scores = torch.zeros(G, 1, device=device)  # [G, width] SID log-probs
        codes = torch.zeros(G, 1, 0, dtype=torch.long, device=device)  # [G, width, l]
        width = 1
        group_ar = torch.arange(G, device=device)
        for level in range(L):
            K = vocab.codebook_sizes[level]
            logits = _level_logits(last, heads[level])  # [G * width, K]
            allowed = trie.allowed(level, nodes)
            logp = _masked_log_softmax(logits, allowed)
            if level == L - 1 and excluded is not None:
                items = trie.node_child[level][nodes]  # [G * width, K]
                user = torch.div(
                    torch.arange(G * width, device=device),
                    (G // max(B, 1)) * width,
                    rounding_mode="floor",
                )
                hit = excluded[user[:, None], items.clamp_min(0)] & (items >= 0)
                logp = logp.masked_fill(hit, float("-inf"))
            cand = (scores[:, :, None] + logp.view(G, width, K)).view(G, width * K)
            n_keep = min(nb, width * K)
            if marginals is None:
                scores, flat = cand.topk(n_keep, dim=-1)  # sorted descending
            else:  # rank by SID log-prob + the weighted prior mass under each child
                reached = trie.node_child[level][nodes].view(G, width * K)
                mass = marginals[level].gather(1, reached.clamp_min(0))
                key = cand + mass.masked_fill(reached < 0, float("-inf"))
                key, flat = key.topk(n_keep, dim=-1)
                scores = key if level == L - 1 else cand.gather(1, flat)
            parent = torch.div(flat, K, rounding_mode="floor")  # [G, n_keep]
            code = flat - parent * K
            rows = (group_ar[:, None] * width + parent).view(-1)  # previous flat row of each beam
            prev_codes = codes.view(G * width, level)[rows]
            child = trie.step(level, nodes[rows], code.view(-1))
            codes = torch.cat([prev_codes, code.view(-1, 1)], dim=1).view(G, n_keep, level + 1)
            width = n_keep
            if level == L - 1:
                break
            # dead beams (-inf: fewer valid continuations than beams) park at the root;
            # their score stays -inf and they never reach the results
            nodes = child.clamp_min(0)
            tok = vocab.level_start[level] + code  # [G, width]
            last = decoder.step(tok, parent, rows, prev_codes)  # [G * width, H]

        alive = torch.isfinite(scores)  # [G, nb]
        items = child.view(G, width).where(alive, -1)
        codes = codes.where(alive[:, :, None], -1)
        if n_slots > 1:  # k lists per (user, outcome) → one
            items, codes, scores = _merge_slots(items, codes, scores, n_slots, nb)
            width = items.shape[1]
        out_index = torch.tensor(
            [-1 if o is None else vocab.outcomes.index(o) for o in labels], device=device
        )
        if counts is None:
            items, codes, scores = items[:, :k_out], codes[:, :k_out], scores[:, :k_out]
            outcomes = out_index[0].expand_as(items).where(items >= 0, -1)
        else:
            items, codes, scores, outcomes = _merge_budgets(
                items.view(B, n_out, width),
                codes.view(B, n_out, width, L),
                scores.view(B, n_out, width),
                counts,
                out_index,
                n_items,
            )
        prior_scores = None
        if item_logp is not None and G == B:  # one query per user: its dense log-probs
            prior_scores = item_logp.gather(1, items.clamp_min(0))
            prior_scores = prior_scores.masked_fill(items < 0, float("-inf"))
        # pad to k_out when the catalogue is smaller than the request
        if items.shape[1] < k_out:
            pad = k_out - items.shape[1]
            items = F.pad(items, (0, pad), value=-1)
            outcomes = F.pad(outcomes, (0, pad), value=-1)
            scores = F.pad(scores, (0, pad), value=float("-inf"))
            codes = F.pad(codes, (0, 0, 0, pad), value=-1)
            if prior_scores is not None:
                prior_scores = F.pad(prior_scores, (0, pad), value=float("-inf"))
        return BeamSearchOutput(
            items=items,
            codes=codes,
            scores=scores,
            outcomes=outcomes,
            history_states=history_states,
            history_mask=attention_mask,
            prior_scores=prior_scores,
        )
    finally:
        if was_training:
            lm.train()


def _merge_slots(items, codes, scores, k: int, keep: int):
    """Per-slot beams items/scores [R * k, W], codes [R * k, W, L] → one list per row R:
    each item once, scored log(mean over the k slots of its probability) (0 where a slot did
    not return it), sorted descending, the best `keep` (-1 / -inf where fewer exist)."""
    G, W = items.shape
    L = codes.shape[-1]
    R = G // k
    items, scores, codes = items.view(R, k * W), scores.view(R, k * W), codes.view(R, k * W, L)
    scores = scores.masked_fill(items < 0, float("-inf"))
    order = items.argsort(dim=-1, stable=True)
    it = items.gather(1, order)
    sc = scores.gather(1, order)
    cd = codes.gather(1, order[:, :, None].expand(-1, -1, L))
    first = torch.ones_like(it, dtype=torch.bool)
    first[:, 1:] = it[:, 1:] != it[:, :-1]
    run = first.cumsum(-1) - 1  # [R, k * W] run index of each entry
    top = sc.max(dim=-1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    mass = torch.zeros_like(sc).scatter_add_(1, run, (sc - top).exp())
    merged = mass.log() + top - torch.log(torch.tensor(float(k)))
    run_items = torch.full_like(it, -1).scatter_(1, run, it)
    run_codes = torch.full_like(cd, -1).scatter_(1, run[:, :, None].expand(-1, -1, L), cd)
    n_runs = run[:, -1:] + 1
    exists = torch.arange(k * W, device=it.device)[None] < n_runs
    merged = merged.masked_fill(~exists | (run_items < 0), float("-inf"))
    merged, pick = merged.topk(min(keep, k * W), dim=-1)
    items = run_items.gather(1, pick).where(torch.isfinite(merged), -1)
    codes = run_codes.gather(1, pick[:, :, None].expand(-1, -1, L))
    codes = codes.where(torch.isfinite(merged)[:, :, None], -1)
    return items, codes, merged


def _merge_budgets(items, codes, scores, counts, out_index, n_items):
    """Per-outcome beams → budgeted, de-duplicated candidates sorted by score.

    items/scores: [B, n_out, W]; codes: [B, n_out, W, L]; counts: list of n_out ints.
    Returns items [B, sum(counts)], codes [B, sum(counts), L], scores, outcomes.
    """
    B, n_out, W = items.shape
    device = items.device
    taken = torch.zeros(B, n_items + 1, dtype=torch.bool, device=device)  # last column: -1
    parts = []
    for o, c in enumerate(counts):
        if c == 0:
            continue
        it = items[:, o]
        slot = it.where(it >= 0, n_items)
        ok = (it >= 0) & ~taken.gather(1, slot)
        keep = ok & (ok.cumsum(-1) <= c)
        # positions of the first c kept beams (still in score order), then unkept filler
        pos = (~keep).to(torch.uint8).argsort(dim=-1, stable=True)[:, :c]
        valid = keep.gather(1, pos)
        sel_items = it.gather(1, pos).where(valid, -1)
        sel_scores = scores[:, o].gather(1, pos).where(valid, float("-inf"))
        sel_codes = codes[:, o].gather(1, pos[:, :, None].expand(-1, -1, codes.shape[-1]))
        sel_codes = sel_codes.where(valid[:, :, None], -1)
        sel_out = out_index[o].expand(B, pos.shape[1]).where(valid, -1)
        taken.scatter_(1, sel_items.where(valid, n_items), True)
        parts.append((sel_items, sel_codes, sel_scores, sel_out))
    items = torch.cat([p[0] for p in parts], 1)
    codes = torch.cat([p[1] for p in parts], 1)
    scores = torch.cat([p[2] for p in parts], 1)
    outcomes = torch.cat([p[3] for p in parts], 1)
    scores, order = scores.sort(dim=-1, descending=True, stable=True)
    items = items.gather(1, order)
    outcomes = outcomes.gather(1, order)
    codes = codes.gather(1, order[:, :, None].expand_as(codes))
    return items, codes, scores, outcomes


# --------------------------------------------------------------------------- teacher forcing
@torch.no_grad()
def teacher_forced_level_correct(
    lm,
    vocab: SIDVocab,
    trie,
    input_ids: LongTensor,
    attention_mask: LongTensor,
    gold_codes: LongTensor,
    *,
    outcome: str | None = None,
) -> BoolTensor:
    """Per-level SID accuracy under teacher forcing, in one forward pass.

    The gold SID is appended to each (left-padded) history; at level ``l`` the model's
    arg-max over the valid children of the gold prefix ``gold[:l]`` is compared with
    ``gold[l]``.

    Args:
        input_ids, attention_mask: LongTensor[B, T], LEFT-padded; they should end with the
            gold item's outcome token unless ``outcome`` is given (then it is appended).
        gold_codes: LongTensor[B, L] the target items' SIDs (must be real items of the trie).

    Returns:
        BoolTensor[B, L]: whether level ``l``'s gold code was the arg-max.
    """
    input_ids = torch.as_tensor(input_ids)
    attention_mask = torch.as_tensor(attention_mask)
    _check_inputs(vocab, trie, input_ids, attention_mask)
    device = input_ids.device
    if trie.node_child[0].device != device:
        trie = trie.to(device)
    gold = torch.as_tensor(gold_codes, device=device, dtype=torch.long)
    B, T = input_ids.shape
    L = vocab.num_levels
    if gold.shape != (B, L):
        raise ValueError(f"gold_codes must be [B={B}, L={L}], got {tuple(gold.shape)}")
    # walk the trie along the gold codes: nodes[:, l] is the node holding gold[:, :l]
    nodes = [torch.zeros(B, dtype=torch.long, device=device)]
    for level in range(L):
        nxt = trie.step(level, nodes[-1], gold[:, level])
        bad = (nxt < 0).nonzero().flatten()
        if len(bad):
            raise ValueError(
                f"gold_codes row {int(bad[0])} ({gold[bad[0]].tolist()}) is not a valid SID "
                f"prefix at level {level}: pass codes of catalogue items"
            )
        nodes.append(nxt.clamp_min(0))
    ids = [input_ids, vocab.sid_token_ids(gold)]
    mask = [attention_mask.long(), torch.ones(B, L, dtype=torch.long, device=device)]
    if outcome is not None:
        tok = torch.full((B, 1), vocab.outcome_id(outcome), dtype=torch.long, device=device)
        ids.insert(1, tok)
        mask.insert(1, torch.ones_like(tok))
    ids, mask = torch.cat(ids, 1), torch.cat(mask, 1)
    was_training = lm.training
    lm.eval()
    try:
        heads = _level_heads(lm, vocab)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = _forward(lm, ids, mask, positions, cache=None)
    finally:
        if was_training:
            lm.train()
    S = ids.shape[1]
    correct = torch.zeros(B, L, dtype=torch.bool, device=device)
    for level in range(L):
        h = hidden[:, S - L - 1 + level]  # state just before the level-l token
        logits = _level_logits(h, heads[level]).masked_fill(
            ~trie.allowed(level, nodes[level]), float("-inf")
        )
        correct[:, level] = logits.argmax(-1) == gold[:, level]
    return correct
