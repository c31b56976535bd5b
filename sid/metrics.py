"""Retrieval metrics as pure functions over tensors or arrays.

Conventions: ``B`` users, ``K`` ranked candidates, ``L`` SID levels, ``N`` catalogue items.
Ranked lists are item indices ``[B, K]`` (best first) padded with -1; every user has one gold
item (leave-one-out). Inputs may be torch tensors, numpy arrays or nested lists; scalar
metrics return Python floats, per-level metrics numpy arrays ``[L]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# the cut-offs every report and benchmark shows
RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


def ranking_metrics(ranked, gold) -> dict[str, float]:
    """Recall@RECALL_KS, NDCG@NDCG_KS and MRR of rankings ranked [B, K] for gold [B]."""
    out = {f"recall@{k}": recall_at_k(ranked, gold, k) for k in RECALL_KS}
    out.update({f"ndcg@{k}": ndcg_at_k(ranked, gold, k) for k in NDCG_KS})
    out["mrr"] = mrr(ranked, gold)
    return out


def _long(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).long()


def _check_ranked(ranked, gold) -> tuple[torch.Tensor, torch.Tensor]:
    ranked, gold = _long(ranked), _long(gold)
    if ranked.dim() != 2 or gold.dim() != 1 or ranked.shape[0] != gold.shape[0]:
        raise ValueError(
            f"ranked must be [B, K] and gold [B]; got {tuple(ranked.shape)} and {tuple(gold.shape)}"
        )
    return ranked, gold


def _check_k(k: int | None, K: int) -> int:
    if k is None:
        return K
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), K)


def gold_rank(ranked, gold, *, k: int | None = None) -> torch.Tensor:
    """0-based rank of the gold item in ``ranked[:, :k]``, -1 if absent. ranked [B, K], gold [B]."""
    ranked, gold = _check_ranked(ranked, gold)
    ranked = ranked[:, : _check_k(k, ranked.shape[1])]
    hit = (ranked == gold[:, None]) & (gold[:, None] >= 0)
    first = hit.int().argmax(dim=1)
    return torch.where(hit.any(dim=1), first, -1)


def recall_at_k(ranked, gold, k: int | None = None) -> float:
    """Share of users whose gold item is in the top ``k``. ranked [B, K], gold [B]."""
    rank = gold_rank(ranked, gold, k=k)
    return float((rank >= 0).float().mean()) if len(rank) else 0.0


def recall_curve(ranked, gold, max_k: int | None = None) -> list[float]:
    """Recall@k for k = 1 … min(max_k, K): one pass over the gold ranks. ranked [B, K], gold [B]."""
    rank = gold_rank(ranked, gold)
    K = _check_k(max_k, int(_long(ranked).shape[1]))
    if len(rank) == 0:
        return [0.0] * K
    hits = torch.bincount(rank[rank >= 0], minlength=K)[:K].cumsum(0)
    return [round(float(h) / len(rank), 6) for h in hits]


def ndcg_at_k(ranked, gold, k: int | None = None) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 2)`` if in the top ``k``, else 0."""
    rank = gold_rank(ranked, gold, k=k)
    gain = torch.where(rank >= 0, 1.0 / torch.log2(rank.double() + 2.0), 0.0)
    return float(gain.mean()) if len(rank) else 0.0


def mrr(ranked, gold, k: int | None = None) -> float:
    """Mean reciprocal rank ``1 / (rank + 1)`` of the gold item (0 if not in the top ``k``)."""
    rank = gold_rank(ranked, gold, k=k)
    rr = torch.where(rank >= 0, 1.0 / (rank.double() + 1.0), 0.0)
    return float(rr.mean()) if len(rank) else 0.0


# --------------------------------------------------------------------------- future windows
def _window_hits(ranked, gold_sets) -> tuple[torch.Tensor, torch.Tensor]:
    """hits [B, K] (ranked item is one of the user's window items), relevant [B] (distinct
    window items). gold_sets [B, W], -1 padded; a repeated item counts once."""
    ranked, gold = _long(ranked), _long(gold_sets)
    if ranked.dim() != 2 or gold.dim() != 2 or ranked.shape[0] != gold.shape[0]:
        raise ValueError(
            f"ranked must be [B, K] and gold_sets [B, W]; got {tuple(ranked.shape)} and "
            f"{tuple(gold.shape)}"
        )
    s = gold.sort(dim=1).values
    distinct = (s >= 0) & _prepend_true(s[:, 1:] != s[:, :-1])
    hits = ((ranked[:, :, None] == gold[:, None, :]) & (gold[:, None, :] >= 0)).any(-1)
    return hits & (ranked >= 0), distinct.sum(dim=1)


def _prepend_true(x: torch.Tensor) -> torch.Tensor:
    """Prepend a True column: the first of the sorted values is always a new one."""
    return torch.cat([torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x], dim=1)


def window_metrics(ranked, gold_sets, *, ks=RECALL_KS, ndcg_ks=NDCG_KS) -> dict[str, float]:
    """Ranking metrics against a future window of relevant items per user (PinRec's
    protocol); ranked [B, K], gold_sets [B, W] item indices, -1 padded.

    `hit@K`: share of users with any window item in the top K. `recall@K`: the mean over users
    of the share of their distinct window items in the top K. `ndcg@K`: DCG of the hits over
    the ideal DCG of min(K, distinct window items). Users without a window item are left out.
    """
    hits, relevant = _window_hits(ranked, gold_sets)
    keep = relevant > 0
    hits, relevant = hits[keep].double(), relevant[keep].double()
    if len(relevant) == 0:
        return {
            **{f"hit@{k}": 0.0 for k in ks},
            **{f"recall@{k}": 0.0 for k in ks},
            **{f"ndcg@{k}": 0.0 for k in ndcg_ks},
            "users": 0,
        }
    K = hits.shape[1]
    found = hits.cumsum(dim=1)  # [B, K] hits in the top 1..K
    discount = 1.0 / torch.log2(torch.arange(K, dtype=torch.float64) + 2.0)
    out: dict[str, float] = {}
    for k in ks:
        at = found[:, min(k, K) - 1]
        out[f"hit@{k}"] = float((at > 0).double().mean())
        out[f"recall@{k}"] = float((at / relevant).mean())
    gains = (hits * discount).cumsum(dim=1)
    ideal = discount.cumsum(0)
    for k in ndcg_ks:
        top = min(k, K)
        best = ideal[(relevant.clamp(max=k).long() - 1).clamp(max=K - 1)]
        out[f"ndcg@{k}"] = float((gains[:, top - 1] / best).mean())
    out["users"] = int(keep.sum())
    return out


def window_recall_curve(ranked, gold_sets, max_k: int | None = None) -> list[float]:
    """hit@k for k = 1 … min(max_k, K) against each user's window; ranked [B, K], gold [B, W]."""
    hits, relevant = _window_hits(ranked, gold_sets)
    hits = hits[relevant > 0]
    K = _check_k(max_k, int(hits.shape[1]))
    if len(hits) == 0:
        return [0.0] * K
    any_hit = hits[:, :K].int().cummax(dim=1).values
    return [round(float(x), 6) for x in any_hit.double().mean(dim=0)]


# --------------------------------------------------------------------------- diversity
def distinct_first_codes(ranked, codes, k: int = 10) -> float:
    """Mean number of distinct level-0 SID codes among each user's top ``k`` (more: the list
    spans more of the catalogue's coarse clusters). ranked [B, K] (-1 padded), codes [N, L]."""
    top = _long(ranked)[:, : _check_k(k, _long(ranked).shape[1])]
    first = torch.where(top >= 0, _long(codes)[top.clamp_min(0), 0], -1)
    s = first.sort(dim=1).values
    new = (s >= 0) & _prepend_true(s[:, 1:] != s[:, :-1])
    return float(new.sum(dim=1).double().mean()) if len(s) else 0.0


def intra_list_distance(ranked, embeddings, k: int = 10, chunk_size: int = 1024) -> float:
    """Mean pairwise cosine distance (1 - cosine) between the items of each user's top ``k``,
    averaged over users with at least two items. ranked [B, K], embeddings [N, D]."""
    e = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    e = torch.nn.functional.normalize(e.float(), dim=-1)
    top = _long(ranked)[:, : _check_k(k, _long(ranked).shape[1])]
    total, users = 0.0, 0
    for start in range(0, top.shape[0], chunk_size):
        t = top[start : start + chunk_size]
        real = (t >= 0).float()  # [b, k]
        v = e[t.clamp_min(0)] * real[..., None]
        n = real.sum(dim=1)
        pairs = n * (n - 1)
        sims = torch.einsum("bkd,bjd->b", v, v) - (v * v).sum(dim=(1, 2))  # off-diagonal sum
        ok = pairs > 0
        total += float((1.0 - sims[ok] / pairs[ok]).sum())
        users += int(ok.sum())
    return total / users if users else 0.0


def per_level_accuracy(correct, *, cumulative: bool = False) -> np.ndarray:
    """Mean per level of a [B, L] bool table (e.g. ``teacher_forced_level_correct``).

    ``correct[b, l]``: whether user b's gold code at level l was the arg-max among the valid
    children of the gold prefix. With ``cumulative=True`` level l counts only users whose
    levels 0..l were all right (the share whose greedy path stays on the gold item).
    Returns float64 [L].
    """
    c = torch.as_tensor(np.asarray(correct) if not torch.is_tensor(correct) else correct).bool()
    if c.dim() != 2:
        raise ValueError(f"correct must be [B, L] bool, got shape {tuple(c.shape)}")
    if cumulative:
        c = c.int().cumprod(dim=1).bool()
    return c.double().mean(dim=0).cpu().numpy()


def beam_prefix_accuracy(beam_codes, gold_codes) -> np.ndarray:
    """Per level l, share of users whose gold prefix ``gold[:l+1]`` is among the K beams.

    beam_codes: [B, K, L] candidates' SIDs (-1 rows for padding); gold_codes: [B, L].
    Returns float64 [L] (non-increasing in l).
    """
    beams, gold = _long(beam_codes), _long(gold_codes)
    if beams.dim() != 3 or gold.dim() != 2 or beams.shape[::2] != gold.shape:
        raise ValueError(
            f"beam_codes must be [B, K, L] and gold_codes [B, L]; got {tuple(beams.shape)} and "
            f"{tuple(gold.shape)}"
        )
    same_prefix = (beams == gold[:, None, :]).int().cumprod(dim=2).bool()  # [B, K, L]
    return same_prefix.any(dim=1).double().mean(dim=0).cpu().numpy()


def _walk_trie(trie, codes: torch.Tensor) -> torch.Tensor:
    """codes [M, L] → item index [M] or -1, following ``trie.step`` level by level."""
    node = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    ok = torch.ones(codes.shape[0], dtype=torch.bool, device=codes.device)
    for level in range(codes.shape[1]):
        size = trie.codebook_sizes[level]
        code = codes[:, level]
        ok = ok & (code >= 0) & (code < size)
        nxt = trie.step(level, node, code.clamp(0, size - 1))
        ok = ok & (nxt >= 0)
        node = nxt.clamp_min(0)
    return torch.where(ok, node, -1)


def invalid_sid_rate(codes, trie) -> float:
    """Share of generated SIDs that are not catalogue items.

    codes: [B, K, L] (or [M, L]); rows that are all -1 are padding and not counted.
    trie: a ``PrefixTrie`` (``step``, ``codebook_sizes``) of the catalogue.
    """
    c = _long(codes)
    if c.dim() < 2 or c.shape[-1] != trie.num_levels:
        raise ValueError(f"codes must be [..., L={trie.num_levels}], got shape {tuple(c.shape)}")
    flat = c.reshape(-1, c.shape[-1])
    real = ~(flat == -1).all(dim=1)
    if not bool(real.any()):
        return 0.0
    items = _walk_trie(trie, flat[real])
    return float((items < 0).double().mean())


def duplicate_rate(items) -> float:
    """Share of non-padding candidates that repeat an earlier candidate of the same user.

    items: [B, K] item indices, -1 padding.
    """
    it = _long(items)
    if it.dim() != 2:
        raise ValueError(f"items must be [B, K], got shape {tuple(it.shape)}")
    real = it >= 0
    n = int(real.sum())
    if n == 0:
        return 0.0
    s, _ = it.sort(dim=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    return float(dup.sum()) / n


def coverage_at_k(items, num_items: int, k: int | None = None) -> float:
    """Distinct items in the top ``k`` over all users ÷ catalogue size. items [B, K], -1 padding."""
    it = _long(items)
    if it.dim() != 2:
        raise ValueError(f"items must be [B, K], got shape {tuple(it.shape)}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    top = it[:, : _check_k(k, it.shape[1])]
    distinct = torch.unique(top[top >= 0])
    return len(distinct) / num_items


def latency_summary(batch_seconds: Sequence[float], batch_sizes: Sequence[int]) -> dict:
    """Latency of batched retrieval.

    batch_seconds: wall time of each batch; batch_sizes: users in each batch.
    Returns ``{"p50_ms", "p95_ms", "mean_ms"}`` per batch, ``"per_user_ms"`` (total time ÷
    users), ``"users_per_s"``, ``"batches"`` and ``"users"``.
    """
    t = np.asarray(batch_seconds, dtype=np.float64)
    n = np.asarray(batch_sizes, dtype=np.int64)
    if t.shape != n.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(
            f"batch_seconds ({t.shape}) and batch_sizes ({n.shape}) must be equal-length, non-empty"
        )
    total_t, users = float(t.sum()), int(n.sum())
    return {
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p95_ms": float(np.percentile(t, 95) * 1e3),
        "mean_ms": float(t.mean() * 1e3),
        "per_user_ms": total_t / max(users, 1) * 1e3,
        "users_per_s": users / total_t if total_t > 0 else float("inf"),
        "batches": len(t),
        "users": users,
    }


def popularity_ranking(
    train_items,
    *,
    num_items: int,
    k: int,
    exclude=None,
    num_users: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Most popular training items as a ranking for every user (the popularity baseline).

    train_items: [n] item index of every training interaction (all users).
    exclude: [B, M] item indices per user to leave out (e.g. the history), -1 padded; or None.
    num_users: B when ``exclude`` is None.
    Ties in popularity break towards the lower item index. Returns LongTensor [B, k], -1
    padded when fewer than k items are left.
    """
    counts = torch.bincount(_long(train_items).flatten(), minlength=num_items)
    if counts.shape[0] != num_items:
        raise ValueError(f"train_items holds item indices >= num_items={num_items}")
    order = torch.sort(-counts, stable=True).indices  # [N] most popular first
    if exclude is None:
        if num_users is None:
            raise ValueError("pass num_users when exclude is None")
        top = _pad_to(order[:k], k)
        return top.expand(num_users, k).clone()
    ex = _long(exclude)
    if ex.dim() != 2:
        raise ValueError(f"exclude must be [B, M] (-1 padded), got shape {tuple(ex.shape)}")
    out = []
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(num_items)
    for start in range(0, ex.shape[0], chunk_size):  # chunks bound the [chunk, N] mask
        e = ex[start : start + chunk_size]
        blocked = torch.zeros(e.shape[0], num_items + 1, dtype=torch.bool)
        blocked.scatter_(1, torch.where(e >= 0, rank_of[e.clamp_min(0)], num_items), True)
        blocked = blocked[:, :num_items]  # [b, N] in popularity order
        pos = blocked.to(torch.uint8).argsort(dim=1, stable=True)[:, :k]
        top = torch.where(blocked.gather(1, pos), -1, order[pos])
        out.append(_pad_to(top, k))
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def _pad_to(x: torch.Tensor, k: int) -> torch.Tensor:
    """Right-pad the last dim of ``x`` with -1 up to ``k``."""
    missing = k - x.shape[-1]
    if missing <= 0:
        return x
    return torch.nn.functional.pad(x, (0, missing), value=-1)


def codebook_usage(codes, codebook_sizes: Sequence[int]) -> list[list[int]]:
    """Items per code at each SID level: ``[L][size]`` counts (codes [N, L]). Levels past
    ``codebook_sizes`` (the collision level) get as many entries as their largest code + 1."""
    codes = _long(codes)
    out = []
    for level in range(codes.shape[1]):
        size = int(codebook_sizes[level]) if level < len(codebook_sizes) else 0
        out.append(torch.bincount(codes[:, level], minlength=size).tolist())
    return out


def popularity_level_accuracy(train_codes, gold_codes) -> list[float]:
    """Teacher-forced per-level accuracy of the popularity guess: at level l, given the gold
    prefix, guess the child code that is most frequent among training interactions under that
    prefix (ties to the lower code). train_codes [n, L] (one row per train interaction),
    gold_codes [B, L]. The baseline a learned level must beat; the first level is the most
    popular first code overall."""
    train, gold = _long(train_codes), _long(gold_codes)
    if train.shape[1] != gold.shape[1]:
        raise ValueError(f"train_codes has {train.shape[1]} levels, gold_codes {gold.shape[1]}")
    out = []
    for level in range(gold.shape[1]):
        # one id per (prefix, code) pair; most frequent code per prefix by sorting counts
        keys = torch.cat([train[:, : level + 1], gold[:, : level + 1]])
        if level:
            inv = torch.unique(keys[:, :level], dim=0, return_inverse=True)[1]
        else:
            inv = torch.zeros(len(keys), dtype=torch.long)
        prefix_train, prefix_gold = inv[: len(train)], inv[len(train) :]
        code_train = train[:, level]
        width = int(keys[:, level].max()) + 1
        pair = prefix_train * width + code_train
        counts = torch.bincount(pair, minlength=(int(inv.max()) + 1) * width).view(-1, width)
        best = counts.argmax(dim=1)  # first maximum: ties go to the lower code
        seen = counts.sum(dim=1) > 0
        guess = torch.where(seen[prefix_gold], best[prefix_gold], -1)
        out.append(round(float((guess == gold[:, level]).float().mean()), 6) if len(gold) else 0.0)
    return out
