"""Training the cross-attention ranking head (:class:`sid.ranking.RankingHead`).

The LM stays frozen; the head learns from next-item examples of the train split
(:class:`RankingExamples`): the positive with its outcome label, and negatives labelled
"none" — the constrained beam search's own candidates the user did not take and, for a head
without score features, random catalogue items. A head fed the beam log-prob
(``score_features=1``) is trained on whole beam lists instead, exactly as it is served.

The defaults of :func:`train_ranker` are the ones train.py uses (`sid.run.arguments` reads
them from this signature).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import LongTensor

from sid.metrics import ndcg_at_k
from sid.ranking import (
    RankingHead,
    _weight_vector,
    beam_score_features,
    candidate_embeddings,
    encode_history,
    history_inputs,
)
from sid.retrieval import BeamSearchConfig
from sid.vocab import SIDVocab


@dataclass
class RankingExamples:
    """Users' sequences in CSR form; the example positions are every position t >= 1, or the
    given ``positions``.

    offsets: int64 [U + 1]; items, outcomes: int64 [N] (user u: ``[offsets[u], offsets[u+1])``).
    Example (u, t): history = the user's items before t, positive = item t with its outcome.
    positions: optional int64 [E] global positions to train on (None: all of them).
    """

    offsets: np.ndarray
    items: np.ndarray
    outcomes: np.ndarray
    positions: np.ndarray | None = None

    @classmethod
    def from_split(cls, split, target: str = "train", users=None) -> RankingExamples:
        """Examples of a :class:`~sid.data.LeaveOneOutSplit`, never its test targets.

        target="train": every next-item position of the train sequences (targets the LM was
        trained on). target="valid": one example per user, the validation target after the
        whole train sequence — the situation of a test target, on items the LM has not been
        trained to predict there. ``users``: indices into the split's users to take (None:
        all); with "valid", keep the users whose validation targets pick weights out.
        """
        if target not in ("train", "valid"):
            raise ValueError(f"target must be 'train' or 'valid', got {target!r}")
        offsets = np.asarray(split.train_offsets, dtype=np.int64)
        items = np.asarray(split.train_items, dtype=np.int64)
        outcomes = np.asarray(split.train_outcomes, dtype=np.int64)
        n_users = len(offsets) - 1
        picked = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
        if picked.size and (picked.min() < 0 or picked.max() >= n_users):
            raise ValueError(f"users must index the split's {n_users} users")
        if target == "train" and users is None:
            return cls(offsets=offsets, items=items, outcomes=outcomes)
        lengths = offsets[1:][picked] - offsets[:-1][picked] + (target == "valid")
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        parts_i, parts_o = [], []
        for u in picked:
            parts_i.append(items[offsets[u] : offsets[u + 1]])
            parts_o.append(outcomes[offsets[u] : offsets[u + 1]])
            if target == "valid":
                parts_i.append(np.asarray(split.valid_items[u : u + 1], dtype=np.int64))
                parts_o.append(np.asarray(split.valid_outcomes[u : u + 1], dtype=np.int64))
        cat = (lambda x: np.concatenate(x)) if parts_i else (lambda x: np.zeros(0, np.int64))
        positions = None
        if target == "valid":  # the last position of each user, when it has a history
            positions = new_offsets[1:] - 1
            positions = positions[lengths >= 2]
        return cls(new_offsets, cat(parts_i), cat(parts_o), positions)

    def targets(self) -> np.ndarray:
        """int64 [E]: the example positions; by default every position that has at least
        one earlier item of the same user."""
        if self.positions is not None:
            return np.asarray(self.positions, dtype=np.int64)
        starts = self.offsets[:-1]
        is_first = np.zeros(len(self.items), dtype=bool)
        is_first[starts[starts < len(self.items)]] = True
        return np.flatnonzero(~is_first)


def _examples(examples) -> RankingExamples:
    if isinstance(examples, RankingExamples):
        return examples
    if all(hasattr(examples, a) for a in ("train_offsets", "train_items", "train_outcomes")):
        return RankingExamples.from_split(examples)
    raise ValueError(
        f"examples must be a RankingExamples or a LeaveOneOutSplit, got {type(examples).__name__}"
    )


def train_ranker(
    head: RankingHead,
    lm,
    vocab: SIDVocab,
    semantic_ids,
    examples,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    n_random_negatives: int = 4,
    n_beam_negatives: int = 16,
    beam_fn: Callable | None = None,
    seed: int = 0,
    max_history: int = 50,
    beam_outcome: str | None = None,
    weight_decay: float = 0.01,
    progress: bool = True,
    list_oversample: int = 4,
    prior=None,
    prior_weight: float = 0.0,
    exclude_history: bool = False,
    list_loss_weight: float = 1.0,
    tune=None,
    eval_every: int = 25,
) -> dict:
    """Train ``head`` on next-item examples of the train split; the LM stays frozen.

    Each step samples ``batch_size`` examples (user, position t) uniformly over train
    interactions that have a history, encodes the last ``max_history`` items before t with
    the frozen LM (no gradient), and scores ``1 + n_beam_negatives + n_random_negatives``
    candidates per example: the positive (label: its outcome), items from a constrained
    beam search on the history that are not the positive (label "none"), and uniformly
    random catalogue items other than the positive (label "none"). Loss: cross-entropy over
    (outcomes + none), averaged over candidates.

    A head with ``score_features`` (fed the beam log-prob) is trained on exactly what it
    sees when serving: the beam search's own list of ``n_beam_negatives`` candidates with
    their beam log-probs, the positive labelled with its outcome where the beam found it and
    every other candidate "none". Lists that miss the positive teach nothing about ordering
    and are skipped, so each step beams ``list_oversample * batch_size`` sampled examples and
    keeps up to ``batch_size`` lists that hold the positive. By default the beam does not
    exclude the history, so the lists are the ones served with the history kept and the head
    also learns to demote items the user has seen; ``exclude_history=True`` trains on the
    lists served with it excluded. Random negatives have no beam score, so this mode takes
    ``n_random_negatives=0``. A head with ``score_features=2`` also reads the dense head's
    log-prob of each candidate: pass ``prior`` (the run's dense head), and ``prior_weight``
    to train on the lists of a beam searched with that dense prior, as served.

    On lists, the per-candidate cross-entropy is joined by a listwise one
    (``list_loss_weight`` times it): the softmax over the list of the log of the score the
    head is served by (``sum_o w_o P(o)``, the default outcome weights of
    :func:`~sid.ranking.rank_candidates`) must put the positive first. The per-candidate loss
    alone learns each class's probability but never compares candidates, and measured on
    ML-1M its order of the plain beam's lists was worse than the beam's own (BENCHMARKS.md).

    With ``tune`` (held-out examples, e.g. :meth:`RankingExamples.from_split` of validation
    targets the head does not train on), training stops early in the sense of keeping the
    best: the beam lists of the tuning examples are searched once, the head ranks them before
    the first step and every ``eval_every`` steps, and the head returns with the weights of
    the best NDCG@10 of those lists (ties: the earlier step, so an untrained head that no
    step beats comes back unchanged).

    Args:
        examples: :class:`RankingExamples` or a :class:`~sid.data.LeaveOneOutSplit` (its
            train part is used).
        semantic_ids: :class:`~sid.codes.SemanticIDs` (``codes [N, L]``; ``trie`` for beams).
        n_random_negatives: random catalogue negatives per example; a head with
            ``score_features`` takes 0 (train.py passes 0 for it).
        n_beam_negatives: beam-search negatives per example (the list size for a head with
            ``score_features``).
        beam_fn: ``beam_fn(input_ids, attention_mask, exclude_items) -> BeamSearchOutput``;
            default: ``BeamSearchConfig(num_beams=n_beam_negatives, outcome=beam_outcome)``
            (``beam_outcome`` defaults to the first outcome label) searched on the
            semantic IDs' trie. Its ``history_states`` are reused, so beam negatives add no
            second history encoding.
        max_history: most recent items kept per history (the eval histories should use the
            same window).
        prior, prior_weight: the dense head and its weight inside the default beam search
            (:class:`~sid.retrieval.BeamSearchConfig`); ``prior`` is needed by a head with
            ``score_features=2`` and by ``prior_weight > 0``.
        exclude_history: the beam lists of a head with ``score_features`` leave the history
            out, as served with history excluded.
        list_loss_weight: weight of the listwise loss on lists (0: the per-candidate loss
            alone).
        tune: :class:`RankingExamples` to pick the best step on (None: the last step is
            kept); needs ``n_beam_negatives >= 2`` (the lists it ranks).
        eval_every: steps between two rankings of the tuning lists.

    Returns:
        dict with ``losses`` (per step), ``first_loss``/``final_loss`` (means of the first and
        last 10% of steps), ``steps``, ``seconds``, ``examples`` (available training positions);
        with ``score_features`` also ``list_hit_rate`` (share of beamed examples whose list
        held the positive); with ``tune`` also ``tune_curve`` (``[step, NDCG@10]`` pairs;
        step 0 is the untrained head), ``best_step`` and ``tune_examples``.
    """
    from tqdm.auto import tqdm

    if head.config.outcomes != list(vocab.outcomes):
        raise ValueError(
            f"head outcomes {head.config.outcomes} differ from the vocab's {vocab.outcomes}"
        )
    for name, value in (("steps", steps), ("batch_size", batch_size), ("max_history", max_history)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if n_random_negatives < 0 or n_beam_negatives < 0:
        raise ValueError(
            f"negative counts must be >= 0, got n_random_negatives={n_random_negatives}, "
            f"n_beam_negatives={n_beam_negatives}"
        )
    lists = head.config.score_features > 0
    if lists and (n_beam_negatives < 2 or n_random_negatives):
        raise ValueError(
            "a head fed the beam log-prob (score_features > 0) trains on beam candidate lists: "
            f"pass n_beam_negatives >= 2 (the list size, got {n_beam_negatives}) and "
            f"n_random_negatives=0 (random items have no beam score, got {n_random_negatives})"
        )
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if tune is not None and n_beam_negatives < 2:
        raise ValueError(
            "tune= ranks the beam lists of held-out examples: pass n_beam_negatives >= 2 "
            f"(the list size, got {n_beam_negatives})"
        )
    if list_oversample < 1:
        raise ValueError(f"list_oversample must be >= 1, got {list_oversample}")
    if not (math.isfinite(list_loss_weight) and list_loss_weight >= 0):
        raise ValueError(f"list_loss_weight must be a finite number >= 0, got {list_loss_weight}")
    if (head.config.score_features >= 2 or prior_weight > 0) and prior is None and beam_fn is None:
        raise ValueError(
            "a head that reads the dense head's scores (score_features=2) or a beam with a "
            "dense prior (prior_weight > 0) needs prior= the run's dense head"
        )
    data = _examples(examples)
    codes_table = semantic_ids.codes.cpu()
    n_items = codes_table.shape[0]
    if n_items < 2:
        raise ValueError(f"the catalogue has {n_items} item(s); ranking needs at least 2")
    positions = _checked_targets(data, n_items, "training")
    if n_beam_negatives > 0 and beam_fn is None:
        beam_fn = _default_beam_fn(
            lm, vocab, semantic_ids, n_beam_negatives, beam_outcome, prior, prior_weight
        )

    device = head.null_memory.device
    user_of = np.searchsorted(data.offsets, positions, side="right") - 1
    starts = torch.from_numpy(data.offsets[user_of])
    positions_t = torch.from_numpy(positions)
    none_class = len(vocab.outcomes)
    served = _weight_vector(head, None).to(device)  # the outcome weights it is ranked by
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
        ),
    )
    lm_was_training = lm.training
    lm.eval()
    req = [p.requires_grad for p in lm.parameters()]
    for p in lm.parameters():
        p.requires_grad_(False)
    head.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="ranker", disable=not progress)
    beamed, hits = 0, 0

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")

    dense = head.config.score_features >= 2

    def inputs(source: RankingExamples, pos: LongTensor, start: LongTensor):
        # last max_history items before pos, right-aligned, -1 on the left
        items_t, outcomes_t = torch.from_numpy(source.items), torch.from_numpy(source.outcomes)
        idx = pos[:, None] - max_history + torch.arange(max_history)
        ok = idx >= start[:, None]
        hist_items = items_t[idx.clamp_min(0)].where(ok, -1)
        hist_out = outcomes_t[idx.clamp_min(0)].where(ok, -1)
        keep_cols = ok.any(0)  # drop columns that are padding for every row
        hist_items, hist_out = hist_items[:, keep_cols], hist_out[:, keep_cols]
        ids, mask = history_inputs(vocab, codes_table, hist_items, hist_out)
        return ids.to(device), mask.to(device), hist_items, items_t[pos], outcomes_t[pos]

    tuning = None
    if tune is not None:
        tuning = _tune_lists(
            _examples(tune), inputs, beam_fn, lm, vocab, codes_table, n_items,
            size=n_beam_negatives, none_class=none_class, dense=dense,
            exclude_history=exclude_history or not lists,
            batch_size=batch_size * list_oversample,
        )  # fmt: skip
    curve: list[list[float]] = []
    best = (-1.0, 0, None)  # (NDCG@10, step, weights)

    def evaluate(step: int):
        nonlocal best
        value = _tune_ndcg(head, tuning, served, none_class)
        curve.append([step, value])
        if value > best[0]:
            best = (value, step, {k: v.detach().clone() for k, v in head.state_dict().items()})
        head.train()

    try:
        if tuning is not None:
            evaluate(0)
        for _ in bar:
            steps_done = len(losses)
            if tuning is not None and steps_done % eval_every == 0 and curve[-1][0] != steps_done:
                evaluate(steps_done)
            pick = torch.randint(
                len(positions_t), (batch_size * (list_oversample if lists else 1),), generator=gen
            )
            pos, start = positions_t[pick], starts[pick]
            ids, mask, hist_items, target, target_outcome = inputs(data, pos, start)

            if lists:
                with torch.no_grad():
                    # history items stay in the lists (as at serving with the history kept),
                    # so the head also learns to demote what the user has already seen
                    beams = beam_fn(ids, mask, hist_items.to(device) if exclude_history else None)
                batch = _beam_list_batch(
                    beams,
                    target,
                    target_outcome,
                    n_beam_negatives,
                    none_class,
                    dense=dense,
                )
                beamed, hits = beamed + len(pick), hits + (0 if batch is None else len(batch[0]))
                if batch is None:  # no list held its positive: nothing to learn from
                    continue
                rows, cands, labels, features = (x[:batch_size] for x in batch)
                rows = rows.to(device)
                with torch.no_grad():
                    embeds = candidate_embeddings(
                        lm, vocab, codes_table[cands.clamp_min(0)].to(device)
                    )
                logits = head(
                    beams.history_states[rows], mask[rows], embeds,
                    scores=features.to(device),
                )  # fmt: skip
                labels = labels.to(device)
                loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
                )
                if list_loss_weight > 0:
                    loss = loss + list_loss_weight * _list_loss(logits, labels, served, none_class)
                update(loss)
                continue
            with torch.no_grad():
                cands = [target[:, None]]
                states = None
                if n_beam_negatives > 0:
                    beams = beam_fn(ids, mask, hist_items.to(device))
                    states = beams.history_states
                    beam_items = beams.items[:, :n_beam_negatives].cpu()
                    if beam_items.shape[1] < n_beam_negatives:
                        beam_items = F.pad(
                            beam_items, (0, n_beam_negatives - beam_items.shape[1]), value=-1
                        )
                    # a beam that found the positive (or found nothing) becomes a random item
                    bad = (beam_items < 0) | (beam_items == target[:, None])
                    filler = _random_other(target, n_beam_negatives, n_items, gen)
                    cands.append(beam_items.where(~bad, filler))
                if n_random_negatives > 0:
                    cands.append(_random_other(target, n_random_negatives, n_items, gen))
                cands = torch.cat(cands, 1)  # [B, C]
                if states is None:
                    states = encode_history(lm, ids, mask)
                embeds = candidate_embeddings(lm, vocab, codes_table[cands].to(device))
            labels = torch.full(cands.shape, none_class, dtype=torch.long)
            labels[:, 0] = target_outcome
            logits = head(states, mask, embeds)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(device))
            update(loss)
        if tuning is not None and losses and curve[-1][0] != len(losses):
            evaluate(len(losses))
        if tuning is not None:
            head.load_state_dict(best[2])
    finally:
        for p, r in zip(lm.parameters(), req, strict=True):
            p.requires_grad_(r)
        lm.train(lm_was_training)
        head.eval()
    if not losses:
        # the head keeps its start (the beam's own order); the LM's run is not lost over it
        warnings.warn(
            f"ranking head not trained: no beam list of {n_beam_negatives} candidates held its "
            f"positive in {beamed} sampled examples (train the LM further or use longer lists); "
            "it keeps its initial beam-log-prob ordering",
            stacklevel=2,
        )
    n = max(1, len(losses) // 10)
    stats = {
        "losses": losses,
        "first_loss": float(np.mean(losses[:n])) if losses else None,
        "final_loss": float(np.mean(losses[-n:])) if losses else None,
        "steps": len(losses),
        "seconds": time.perf_counter() - t0,
        "examples": int(len(positions)),
    }
    if lists:
        stats["list_hit_rate"] = hits / max(1, beamed)
    if tuning is not None:
        stats |= {"tune_curve": curve, "best_step": best[1], "tune_examples": tuning.examples}
    return stats


def _checked_targets(data: RankingExamples, n_items: int, what: str) -> np.ndarray:
    """The example positions of ``data``, refused when there are none or when an item lies
    outside the catalogue."""
    positions = data.targets()
    if len(positions) == 0:
        raise ValueError(f"no {what} examples: every sequence has fewer than 2 items")
    if int(data.items.max()) >= n_items:
        raise ValueError(
            f"{what} examples hold item index {int(data.items.max())} >= catalogue size {n_items}"
        )
    return positions


@dataclass
class _TuneLists:
    """The beam lists of held-out examples that hold their positive, ready for the head:
    per chunk (history states, mask, candidate embeddings, score features or None, labels).
    ``examples`` counts every example beamed, so that a list without its positive (which no
    order can score) still counts as a miss."""

    chunks: list
    examples: int


@torch.no_grad()
def _tune_lists(
    data, inputs, beam_fn, lm, vocab, codes_table, n_items, *, size, none_class, dense,
    exclude_history, batch_size,
) -> _TuneLists:  # fmt: skip
    positions = _checked_targets(data, n_items, "tune=")
    user_of = np.searchsorted(data.offsets, positions, side="right") - 1
    chunks = []
    for lo in range(0, len(positions), batch_size):
        pos = torch.from_numpy(positions[lo : lo + batch_size])
        start = torch.from_numpy(data.offsets[user_of[lo : lo + batch_size]])
        ids, mask, hist_items, target, target_outcome = inputs(data, pos, start)
        beams = beam_fn(ids, mask, hist_items.to(ids.device) if exclude_history else None)
        batch = _beam_list_batch(beams, target, target_outcome, size, none_class, dense=dense)
        if batch is None:
            continue
        rows, cands, labels, features = batch
        rows = rows.to(ids.device)
        embeds = candidate_embeddings(lm, vocab, codes_table[cands.clamp_min(0)].to(ids.device))
        chunks.append((beams.history_states[rows], mask[rows], embeds, features, labels))
    return _TuneLists(chunks, len(positions))


@torch.no_grad()
def _tune_ndcg(head: RankingHead, tuning: _TuneLists, served, none_class: int) -> float:
    """NDCG@10 of the head's order of the tuning lists, over every tuning example."""
    head.eval()
    total = 0.0
    for states, mask, embeds, features, labels in tuning.chunks:
        device = states.device
        kwargs = {"scores": features.to(device)} if head.config.score_features else {}
        probs = head(states, mask, embeds, **kwargs).float().softmax(-1)
        labels = labels.to(device)
        valid = labels != -100
        score = (probs @ served).where(valid, float("-inf"))
        positive = (valid & (labels != none_class)).float().argmax(-1)
        ranked = score.topk(min(10, score.shape[1]), dim=1).indices
        total += ndcg_at_k(ranked.cpu(), positive.cpu(), 10) * len(positive)
    return total / tuning.examples


def _list_loss(logits, labels, weights, none_class: int):
    """Listwise cross-entropy: per list, -log softmax over its candidates of
    ``log sum_o w_o P(o)`` (the served score) at the positive. logits [b, C, O + 1], labels
    [b, C] (-100: no candidate; every list holds one positive)."""
    valid = labels != -100
    log_p = logits.float().log_softmax(-1)  # [b, C, O + 1]
    log_w = weights.clamp_min(1e-12).log().where(weights > 0, float("-inf"))
    score = (log_p + log_w).logsumexp(-1).where(valid, float("-inf"))  # log of the served score
    positive = (valid & (labels != none_class)).float().argmax(-1)
    return F.cross_entropy(score, positive)


def _beam_list_batch(
    beams, target, target_outcome, size: int, none_class: int, dense: bool = False
):
    """The rows of a beam search whose list holds the positive, as a training batch.

    Returns None when no row does, else (rows LongTensor[b], candidates LongTensor[b, size]
    (-1 = no candidate), labels LongTensor[b, size] (the positive's outcome, "none" for the
    other candidates, -100 for missing ones), features FloatTensor[b, size, F]: the beam
    log-prob, and with ``dense`` the dense log-prob, renormalised over the list).
    """
    if dense and beams.prior_scores is None:
        raise ValueError("the beam search returned no prior_scores: search with prior=")
    items = beams.items[:, :size].cpu()
    scores = beams.scores[:, :size].float().cpu()
    prior = beams.prior_scores[:, :size].float().cpu() if dense else None
    if items.shape[1] < size:
        pad = size - items.shape[1]
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        prior = None if prior is None else F.pad(prior, (0, pad), value=float("-inf"))
    is_pos = items == target[:, None]
    rows = is_pos.any(1).nonzero().flatten()
    if len(rows) == 0:
        return None
    items, scores, is_pos = items[rows], scores[rows], is_pos[rows]
    prior = None if prior is None else prior[rows]
    valid = items >= 0
    labels = torch.full(items.shape, none_class, dtype=torch.long)
    labels = labels.where(~is_pos, target_outcome[rows][:, None]).where(valid, -100)
    return rows, items, labels, beam_score_features(scores, valid, prior)


def _random_other(target: LongTensor, n: int, n_items: int, gen: torch.Generator) -> LongTensor:
    """[B, n] uniform random items, never the row's target (shifted past it)."""
    offset = torch.randint(1, n_items, (target.shape[0], n), generator=gen)
    return (target[:, None] + offset) % n_items


def _default_beam_fn(
    lm, vocab, semantic_ids, num_beams: int, outcome: str | None, prior=None, prior_weight=0.0
):
    trie = getattr(semantic_ids, "trie", None)
    if trie is None:
        raise ValueError(
            "n_beam_negatives > 0 needs semantic_ids.trie (a SemanticIDs) or a beam_fn; "
            "pass n_beam_negatives=0 to train with random negatives only"
        )
    outcome = vocab.outcomes[0] if outcome is None else outcome
    vocab.outcome_id(outcome)
    config = BeamSearchConfig(
        num_beams=num_beams,
        outcome=outcome,
        return_states=True,
        slots=1 if prior is not None else None,  # the dense scores: one query per user
        prior_weight=prior_weight,
    )

    def beam_fn(input_ids, attention_mask, exclude_items):
        return config.search(lm, vocab, trie, input_ids, attention_mask, exclude_items, prior=prior)

    return beam_fn
