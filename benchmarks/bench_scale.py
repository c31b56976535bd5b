"""Scale: SID tokenizers, collisions, the trie, beam search and the dense head at 10k-1M items.

Synthetic catalogues of N items (default 10k, 100k, 1M): 384-d unit vectors drawn from a
mixture of 1,000 Gaussians around random unit centres (Dirichlet(1) weights; each covariance
a low-rank part shared by all clusters, one of its own and a small isotropic part, see
`make_catalogue`), Zipf(1) item popularity, and sessions of 100k users drawn from
cluster-coherent walks (each step stays in the current cluster with probability 0.8, else
jumps to a cluster drawn by popularity mass; inside a cluster the item is drawn by
popularity). Everything is generated vectorised with
numpy, float32.

Each size runs in fresh subprocesses (so ``ru_maxrss`` is that size's peak RSS):

- ``pipeline``: RQ-KMeans fitted on a subsample (``--fit-sample``, default 200k) and encoding
  all items -> ``SemanticIDs.from_codes`` (suffix policy) on 99% of the catalogue ->
  ``add_items`` of the last 1% (checks every existing SID is unchanged) -> the trie ->
  ``SIDRecModel.build("tiny")`` -> a short plain-torch training of the LM on the sessions ->
  trie-constrained beam search (20 beams, top-20, history excluded) over ``--beam-users``
  users. Besides it measures the reassign policy, the trie's memory and a micro-benchmark
  of its per-step gathers, and the dense head (``sid.dense``) memory and per-user time.
  The "pipeline wall" is SIDs (fit + encode + collision level + add_items) -> trie ->
  model -> training -> beam search.
- ``rqvae``: RQ-VAE fitted on a subsample (``--rqvae-sample``, default 100k) for
  ``--rqvae-epochs`` epochs (fewer than the library's 150: on 2 CPU cores 150 epochs on
  100k vectors take most of an hour), encoding all items, and its collision level.

Codebooks: 3 x 256 at every size (what ``--codebook_sizes auto`` picks for any catalogue of
512 items or more), plus the suffix collision level sized by ``SemanticIDs.from_codes``, so
the beam-search comparison across sizes changes the catalogue and nothing else.

Run (the 1M size needs about 10-20 minutes and a few GB of RAM):

    HF_HUB_OFFLINE=1 python benchmarks/bench_scale.py                      # 10k, 100k, 1M
    HF_HUB_OFFLINE=1 python benchmarks/bench_scale.py --sizes 10000 100000
    python benchmarks/bench_scale.py --plot-only                           # redraw the PNG

Results accumulate by size in ``runs/bench-scale.json`` (a re-run of a size replaces its
entry); a copy goes to ``benchmarks/figures/scale_summary.json`` and the log-log plot of
every cost against N to ``benchmarks/figures/scale_costs.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

OUTCOMES = ["like", "watch"]
SIZES = [256, 256, 256]
DIM = 384
N_CLUSTERS = 1000
N_USERS = 100_000
DEFAULT_JSON = ROOT / "runs" / "bench-scale.json"
FIGURES = ROOT / "benchmarks" / "figures"
TARGET_RSS_GB = 16.0
TARGET_WALL_S = 30 * 60
TARGET_BEAM_RATIO = 2.0


# --------------------------------------------------------------------------- measuring
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Steps:
    """Wall time and RSS (current, peak so far) after each named step, printed as it goes."""

    def __init__(self):
        self.steps: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        s = time.perf_counter() - t
        self.steps[name] = {
            "seconds": round(s, 3),
            "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        print(
            f"  {name:<22} {s:9.2f} s   rss {rss_mb():8.0f} MiB   peak {peak_rss_mb():8.0f} MiB",
            flush=True,
        )


def tensor_mb(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


# --------------------------------------------------------------------------- data
def make_catalogue(n: int, *, seed: int = 0, shared_rank: int = 32, own_rank: int = 8):
    """X float32 [n, 384] unit rows, cluster int32 [n], popularity float64 [n] (Zipf(1)).

    A mixture of 1,000 Gaussians: cluster c has a random unit centre; its covariance is a
    part shared by all clusters (rank `shared_rank`, scales decaying as 1/sqrt(j+1), norm
    ~0.6: attributes every topic has, like text embeddings' genre or year directions), a part
    of its own (rank `own_rank`, norm U(0.2, 0.4)) and a small isotropic part (norm ~0.1).
    Rows are normalised. Mixture weights are Dirichlet(1).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(N_CLUSTERS))
    own_spread = rng.uniform(0.2, 0.4, N_CLUSTERS).astype(np.float32)

    def decay(r):
        d = (1.0 / np.sqrt(np.arange(1, r + 1))).astype(np.float32)
        return d / np.linalg.norm(d)

    shared = rng.standard_normal((shared_rank, DIM), dtype=np.float32) / np.sqrt(DIM)
    shared_scale, own_scale = 0.6 * decay(shared_rank), decay(own_rank)
    cluster = rng.choice(N_CLUSTERS, size=n, p=weights).astype(np.int32)
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(N_CLUSTERS + 1))
    X = np.empty((n, DIM), dtype=np.float32)
    for c in range(N_CLUSTERS):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size == 0:
            continue
        own = rng.standard_normal((own_rank, DIM), dtype=np.float32) / np.sqrt(DIM)
        block = (
            rng.standard_normal((rows.size, shared_rank), dtype=np.float32) * shared_scale
        ) @ shared
        z = rng.standard_normal((rows.size, own_rank), dtype=np.float32)
        block += (z * (own_spread[c] * own_scale)) @ own
        block += rng.standard_normal((rows.size, DIM), dtype=np.float32) * (0.1 / np.sqrt(DIM))
        block += centres[c]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[rows] = block
    popularity = 1.0 / (rng.permutation(n) + 1.0)  # Zipf(1) over a random rank order
    return X, cluster, popularity


def make_sessions(
    cluster: np.ndarray,
    popularity: np.ndarray,
    *,
    n_users: int = N_USERS,
    min_len: int = 10,
    max_len: int = 50,
    stay: float = 0.8,
    like_rate: float = 0.6,
    seed: int = 1,
):
    """Cluster-coherent walks -> items int32 [U, max_len] (-1 past a session's end),
    outcomes int8 [U, max_len] (0 like, 1 watch), lengths int64 [U]."""
    rng = np.random.default_rng(seed)
    order = np.argsort(cluster, kind="stable")
    sorted_cluster = cluster[order]
    cum = np.cumsum(popularity[order])  # float64 [n]
    n_cl = N_CLUSTERS
    seg_end = np.searchsorted(sorted_cluster, np.arange(n_cl), side="right")
    seg_start = np.searchsorted(sorted_cluster, np.arange(n_cl), side="left")
    before = np.where(seg_start > 0, cum[np.maximum(seg_start - 1, 0)], 0.0)
    mass = np.where(seg_end > seg_start, cum[np.maximum(seg_end - 1, 0)] - before, 0.0)
    cl_cdf = np.cumsum(mass / mass.sum())

    def draw_cluster(k):
        return np.minimum(np.searchsorted(cl_cdf, rng.random(k), side="right"), n_cl - 1)

    lengths = rng.integers(min_len, max_len + 1, n_users)
    items = np.full((n_users, max_len), -1, dtype=np.int32)
    cur = draw_cluster(n_users)
    for t in range(max_len):
        jump = rng.random(n_users) >= stay
        if t > 0 and jump.any():
            cur[jump] = draw_cluster(int(jump.sum()))
        u = before[cur] + rng.random(n_users) * mass[cur]
        pos = np.searchsorted(cum, u, side="right")
        pos = np.clip(pos, seg_start[cur], seg_end[cur] - 1)
        items[:, t] = np.where(t < lengths, order[pos], -1)
    outcomes = (rng.random((n_users, max_len)) >= like_rate).astype(np.int8)
    return items, outcomes, lengths


def subsample(n: int, k: int, seed: int) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


# --------------------------------------------------------------------------- collisions
def collision_stats(raw: torch.Tensor, sids) -> dict:
    from sid.codes import codebook_health

    health = codebook_health(raw, codebook_sizes=SIZES, semantic_ids=sids)
    out = {
        "sid_length": sids.num_levels,
        "sid_codebook_sizes": sids.codebook_sizes,
        "collision_rate_raw": health["collision_rate_before"],
        "items_in_collisions_raw": health["items_in_collisions_before"],
        "largest_collision_group": health["largest_collision_group"],
        "collision_rate_after": health["collision_rate_after"],
        "level_utilisation": [lv["utilisation"] for lv in health["levels"]],
        "level_perplexity": [round(lv["perplexity"], 1) for lv in health["levels"]],
    }
    if sids.has_collision_level:
        out["share_with_suffix"] = float((sids.codes[:, -1] > 0).double().mean())
    else:
        out["share_with_suffix"] = 0.0
    return out


# --------------------------------------------------------------------------- model side
def history_batch(vocab, codes, items, outcomes, lengths, users, hist: int):
    """LEFT-padded [B, T] tokens of each user's last `hist` items before the held-out last
    one, the exclude list [B, hist] (-1 padded) and the held-out target items [B]."""
    L1 = 1 + codes.shape[1]
    end = lengths[users] - 1  # the last item is the held-out target
    count = np.minimum(end, hist)  # history items shown, right-aligned in `hist` slots
    j = np.arange(hist)[None, :]
    valid = j >= (hist - count)[:, None]
    cols = np.clip(end[:, None] - hist + j, 0, items.shape[1] - 1)
    it = np.where(valid, items[users[:, None], cols], -1)
    oc = np.where(valid, outcomes[users[:, None], cols], 0)
    tok = vocab.item_token_ids(codes[torch.as_tensor(np.maximum(it, 0), dtype=torch.long)], oc)
    ids = tok.reshape(len(users), hist * L1)
    mask = torch.as_tensor(np.repeat(valid, L1, axis=1), dtype=torch.long)
    ids = ids.where(mask.bool(), 0)
    target = items[users, end]
    return ids, mask, torch.as_tensor(it, dtype=torch.long), torch.as_tensor(target)


def window_batch(rng, vocab, codes, items, outcomes, lengths, *, batch, window, level_tok):
    """Random windows of `window` items of `batch` users (the held-out last item never
    enters), right-padded: {input_ids, attention_mask, labels} with labels on SID tokens."""
    L1 = 1 + codes.shape[1]
    users = rng.integers(0, len(lengths), batch)
    n_train = lengths[users] - 1
    start = (rng.random(batch) * np.maximum(n_train - window, 0)).astype(np.int64)
    cols = start[:, None] + np.arange(window)[None, :]
    valid = cols < n_train[:, None]
    cols = np.minimum(cols, items.shape[1] - 1)
    it = np.where(valid, items[users[:, None], cols], 0)
    oc = np.where(valid, outcomes[users[:, None], cols], 0)
    tok = vocab.item_token_ids(codes[torch.as_tensor(it, dtype=torch.long)], oc)
    ids = tok.reshape(batch, window * L1)
    mask = torch.as_tensor(np.repeat(valid, L1, axis=1), dtype=torch.long)
    labels = ids.where(mask.bool() & level_tok[ids], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sid_token_mask(lm, vocab) -> torch.Tensor:
    level_tok = torch.zeros(lm.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    for s, k in zip(vocab.level_start, vocab.codebook_sizes, strict=True):
        level_tok[s : s + k] = True
    return level_tok


def train_tiny(lm, vocab, codes, items, outcomes, lengths, *, steps, batch, window, seed):
    """Plain AdamW loop over `window_batch`es, next-token loss on SID tokens. Returns
    (first, mean of the last 20) loss."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    lm.train()
    losses = []
    level_tok = sid_token_mask(lm, vocab)
    for _ in range(steps):
        inputs = window_batch(
            rng, vocab, codes, items, outcomes, lengths,
            batch=batch, window=window, level_tok=level_tok,
        )  # fmt: skip
        loss = lm(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    lm.eval()
    return losses[0], float(np.mean(losses[-20:]))


def dense_training_cost(lm, dense, vocab, sids, items, outcomes, lengths, args) -> dict:
    """Seconds per joint (LM + dense head) training step and the peak-RSS growth it causes,
    for a sampled softmax over `--dense-negatives` negatives first, then the full softmax
    over all N items (in that order, so that each one's peak is its own)."""
    from sid.training import joint_dense_loss

    dense.attach(lm, vocab, sids)
    level_tok = sid_token_mask(lm, vocab)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    lm.train()
    out = {"batch": args.train_batch, "window_items": 20, "steps": args.dense_steps}
    for name, negatives in (("sampled", args.dense_negatives), ("full", 0)):
        rng = np.random.default_rng(args.seed)
        before = peak_rss_mb()
        start = time.perf_counter()
        for _ in range(args.dense_steps):
            inputs = window_batch(
                rng, vocab, sids.codes, items, outcomes, lengths,
                batch=args.train_batch, window=20, level_tok=level_tok,
            )  # fmt: skip
            loss, _ = joint_dense_loss(lm, inputs, dense_negatives=negatives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out[name] = {
            "negatives": negatives or len(sids),
            "s_per_step": round((time.perf_counter() - start) / args.dense_steps, 4),
            "peak_rss_growth_mb": round(peak_rss_mb() - before, 1),
        }
    lm.eval()
    type(dense).detach(lm)
    return out


def trie_microbench(trie, rows: int, repeats: int = 50) -> float:
    """Seconds per decoding batch spent in the trie's gathers alone: every level's
    ``allowed`` + ``step`` on `rows` random valid nodes (what one batch of users x beams
    asks the trie per search)."""
    g = torch.Generator().manual_seed(0)
    n = trie.item_nodes.shape[0]
    picks = torch.randint(n, (repeats, rows), generator=g)
    codes = torch.randint(0, 1 << 30, (rows,), generator=g)
    t = time.perf_counter()
    for r in range(repeats):
        nodes_all = trie.item_nodes[picks[r]]
        for level, k in enumerate(trie.codebook_sizes):
            nodes = nodes_all[:, level]
            allowed = trie.allowed(level, nodes)
            trie.step(level, nodes, codes % k)
            allowed.any()
    return (time.perf_counter() - t) / repeats


# --------------------------------------------------------------------------- workers
def worker_pipeline(n: int, args) -> dict:
    from sid.codes import PrefixTrie, SemanticIDs
    from sid.dense import DenseConfig, DenseRetrieval, dense_logits, fuse_with_beam
    from sid.model import SIDRecModel
    from sid.retrieval import BeamSearchConfig
    from sid.tokenizers import RQKMeans

    step = Steps()
    out: dict = {"part": "pipeline", "num_items": n}
    with step("data"):
        X, cluster, popularity = make_catalogue(n, seed=args.seed)
        items, outcomes, lengths = make_sessions(cluster, popularity, seed=args.seed + 1)
        item_ids = [f"i{i}" for i in range(n)]
    out["interactions"] = int(lengths.sum())
    n_new = max(1, n // 100)
    n_old = n - n_new
    fit_idx = subsample(n_old, args.fit_sample, args.seed)
    out["rqkmeans_fit_items"] = int(len(fit_idx))

    # ---- SIDs: fit on a subsample, encode all, collision level on 99%, add the last 1%
    with step("rqkmeans_fit"):
        tok = RQKMeans(codebook_sizes=SIZES, seed=args.seed, verbose=False).fit(X[fit_idx])
    with step("rqkmeans_encode"):
        raw = tok.encode(X)
    with step("semantic_ids"):
        sids_old = SemanticIDs.from_codes(
            raw[:n_old], item_ids[:n_old], codebook_sizes=SIZES, policy="suffix"
        )
    with step("add_items"):
        sids = sids_old.add_items(X[n_old:], item_ids[n_old:], tokenizer=tok)
    out["add_items"] = {
        "new_items": n_new,
        "seconds": step.steps["add_items"]["seconds"],
        "existing_unchanged": bool(torch.equal(sids.codes[:n_old], sids_old.codes)),
        "new_with_suffix": float((sids.codes[n_old:, -1] > 0).double().mean()),
        "unique": int(torch.unique(sids.codes, dim=0).shape[0]) == n,
    }
    del sids_old
    out["collisions_rqkmeans"] = collision_stats(raw, sids)
    out["rqkmeans_mse_sample"] = float(
        (torch.from_numpy(X[fit_idx[:20000]]) - tok.decode(raw[fit_idx[:20000]])).pow(2).mean()
    )

    # ---- the reassign policy (needs last-level distances [N, 256] for every item)
    with step("reassign"):
        dist = tok.last_level_distances(X)
        re = SemanticIDs.from_codes(
            raw, item_ids, codebook_sizes=SIZES, policy="reassign", distances=dist
        )
    out["reassign"] = {
        "seconds": step.steps["reassign"]["seconds"],
        "distances_mb": round(tensor_mb(dist), 1),
        "share_moved": float((re.codes[:, :3] != raw).any(1).double().mean()),
        "collision_level": re.has_collision_level,
        "share_with_suffix": float((re.codes[:, -1] > 0).double().mean())
        if re.has_collision_level
        else 0.0,
        "sid_length": re.num_levels,
    }
    del dist, re

    # ---- the trie
    with step("trie_build"):
        trie = PrefixTrie.build(sids.codes, sids.codebook_sizes)
    out["trie"] = {
        "seconds": step.steps["trie_build"]["seconds"],
        "mb": round(tensor_mb(*trie.node_child, trie.item_nodes), 2),
        "node_child_mb": round(tensor_mb(*trie.node_child), 2),
        "item_nodes_mb": round(tensor_mb(trie.item_nodes), 2),
        "nodes_per_level": trie.num_nodes,
        "table_shapes": [list(t.shape) for t in trie.node_child],
        "gather_s_per_batch": trie_microbench(trie, args.beam_batch * 20),
    }

    # ---- tiny model, short training
    with step("model_build"):
        torch.manual_seed(args.seed)
        model = SIDRecModel.build("tiny", sids, OUTCOMES)
    lm, vocab = model.lm, model.vocab
    with step("train"):
        first, last = train_tiny(
            lm, vocab, sids.codes, items, outcomes, lengths,
            steps=args.train_steps, batch=args.train_batch, window=20, seed=args.seed,
        )  # fmt: skip
    out["train"] = {
        "steps": args.train_steps,
        "batch": args.train_batch,
        "window_items": 20,
        "loss_first": first,
        "loss_last20": last,
        "seconds": step.steps["train"]["seconds"],
    }

    # ---- beam search
    n_beam = args.beam_users_1m if n >= 1_000_000 else args.beam_users
    users = subsample(len(lengths), n_beam, args.seed + 7)
    beam = BeamSearchConfig(num_beams=20, outcome="like", return_states=False)
    batches = [users[i : i + args.beam_batch] for i in range(0, len(users), args.beam_batch)]
    prepared = [
        history_batch(vocab, sids.codes, items, outcomes, lengths, b, args.hist) for b in batches
    ]
    ids, mask, hist, _ = prepared[0]
    beam.search(lm, vocab, trie, ids[:4], mask[:4], hist[:4])  # warm-up, not timed
    hits = 0
    with step("beam"):
        for ids, mask, hist, target in prepared:
            found = beam.search(lm, vocab, trie, ids, mask, hist)
            hits += int((found.items == target[:, None]).any(1).sum())
    beam_s = step.steps["beam"]["seconds"]
    out["beam"] = {
        "users": int(len(users)),
        "batch": args.beam_batch,
        "history_items": args.hist,
        "num_beams": 20,
        "seconds": beam_s,
        "ms_per_user": 1000 * beam_s / len(users),
        "trie_share": trie_microbench(trie, args.beam_batch * 20)
        * len(batches)
        / max(beam_s, 1e-9),
        "recall_at_20_sanity": hits / len(users),
    }

    # ---- dense head: table memory and per-user scoring time (same users, same batches)
    with step("dense_build"):
        dense = DenseRetrieval(DenseConfig(num_items=n, hidden_size=lm.config.hidden_size))
    before_peak = peak_rss_mb()
    with step("dense_score"):
        for ids, mask, hist, _ in prepared:
            logits = dense_logits(lm, dense, ids, mask, vocab.outcome_id("like"))
            fuse_with_beam(logits, None, None, beam_weight=0.0, k=20, exclude=hist)
            del logits
    dense_s = step.steps["dense_score"]["seconds"]
    out["dense"] = {
        "table_mb": round(tensor_mb(dense.items.weight), 1),
        "ms_per_user": 1000 * dense_s / len(users),
        "batch": args.beam_batch,
        "peak_rss_growth_mb": round(peak_rss_mb() - before_peak, 1),
    }
    # ---- dense head training: sampled vs full softmax (after the pipeline's steps)
    with step("dense_train"):
        out["dense_train"] = dense_training_cost(
            lm, dense, vocab, sids, items, outcomes, lengths, args
        )
    keys = ["rqkmeans_fit", "rqkmeans_encode", "semantic_ids", "add_items", "model_build"]
    keys += ["train", "beam"]
    out["pipeline_wall_s"] = round(sum(step.steps[k]["seconds"] for k in keys), 2)
    out["pipeline_steps"] = keys
    out["steps"] = step.steps
    return out


def worker_rqvae(n: int, args) -> dict:
    from sid.codes import SemanticIDs
    from sid.tokenizers import RQVAE

    step = Steps()
    out: dict = {"part": "rqvae", "num_items": n}
    with step("data"):
        X, _, _ = make_catalogue(n, seed=args.seed)
        item_ids = [f"i{i}" for i in range(n)]
    fit_idx = subsample(n, args.rqvae_sample, args.seed)
    out["rqvae_fit_items"] = int(len(fit_idx))
    out["rqvae_epochs"] = args.rqvae_epochs
    out["rqvae_batch"] = args.rqvae_batch
    with step("rqvae_fit"):
        tok = RQVAE(
            codebook_sizes=SIZES,
            epochs=args.rqvae_epochs,
            batch_size=args.rqvae_batch,
            seed=args.seed,
            progress=False,
        ).fit(X[fit_idx])
    out["rqvae_epochs_run"] = len(tok.history)
    out["rqvae_final"] = tok.history[-1]
    with step("rqvae_encode"):
        raw = tok.encode(X)
    with step("semantic_ids"):
        sids = SemanticIDs.from_codes(raw, item_ids, codebook_sizes=SIZES, policy="suffix")
    out["collisions_rqvae"] = collision_stats(raw, sids)
    out["steps"] = step.steps
    return out


WORKERS = {"pipeline": worker_pipeline, "rqvae": worker_rqvae}


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t = time.perf_counter()
    print(f"[{args.worker} N={args.size:,}] threads={torch.get_num_threads()}", flush=True)
    out = WORKERS[args.worker](args.size, args)
    out["process_wall_s"] = round(time.perf_counter() - t, 2)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["loadavg_start"] = [round(x, 2) for x in load0]
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(out, indent=1))


# --------------------------------------------------------------------------- driver
def worker_args(args) -> list[str]:
    keep = [
        "seed", "threads", "fit_sample", "rqvae_sample", "rqvae_epochs", "rqvae_batch",
        "train_steps", "train_batch", "dense_steps", "dense_negatives", "beam_users", "beam_users_1m", "beam_batch", "hist",
    ]  # fmt: skip
    out = []
    for k in keep:
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"sizes": {}}


def tokenizer_row(part: dict, method: str, prefix: str) -> dict:
    """Fit/encode time and collisions of one tokenizer's result, keys named by `prefix`."""
    c = part[f"collisions_{method}"]
    return {
        f"{method}_fit_s": part["steps"][f"{method}_fit"]["seconds"],
        f"{method}_encode_s": part["steps"][f"{method}_encode"]["seconds"],
        f"{method}_fit_items": part[f"{method}_fit_items"],
        f"{prefix}sid_length": c["sid_length"],
        f"{prefix}collision_rate_raw": c["collision_rate_raw"],
        f"{prefix}share_with_suffix": c["share_with_suffix"],
        f"{prefix}largest_group": c["largest_collision_group"],
    }


def summarise(results: dict) -> dict:
    """Per size: the headline numbers; the targets at the largest size measured."""
    rows = {}
    for key, parts in sorted(results["sizes"].items(), key=lambda kv: int(kv[0])):
        p, v = parts.get("pipeline"), parts.get("rqvae")
        row = {"num_items": int(key)}
        if p:
            row.update(tokenizer_row(p, "rqkmeans", ""))
            row.update(
                suffix_size=p["collisions_rqkmeans"]["sid_codebook_sizes"][-1],
                reassign_moved=p["reassign"]["share_moved"],
                reassign_suffix=p["reassign"]["share_with_suffix"],
                reassign_s=p["reassign"]["seconds"],
                trie_mb=p["trie"]["mb"],
                trie_build_s=p["trie"]["seconds"],
                beam_ms_per_user=p["beam"]["ms_per_user"],
                beam_users=p["beam"]["users"],
                trie_share_of_beam=p["beam"]["trie_share"],
                dense_table_mb=p["dense"]["table_mb"],
                dense_ms_per_user=p["dense"]["ms_per_user"],
                dense_train_full_s=p["dense_train"]["full"]["s_per_step"],
                dense_train_sampled_s=p["dense_train"]["sampled"]["s_per_step"],
                dense_train_full_rss_mb=p["dense_train"]["full"]["peak_rss_growth_mb"],
                dense_train_sampled_rss_mb=p["dense_train"]["sampled"]["peak_rss_growth_mb"],
                add_items_s=p["add_items"]["seconds"],
                add_items_unchanged=p["add_items"]["existing_unchanged"],
                pipeline_peak_rss_mb=p["peak_rss_mb"],
                pipeline_wall_s=p["pipeline_wall_s"],
                train_s=p["train"]["seconds"],
                loadavg=p["loadavg_start"][0],
            )
        if v:
            row.update(tokenizer_row(v, "rqvae", "rqvae_"))
            row.update(rqvae_epochs_run=v["rqvae_epochs_run"], rqvae_peak_rss_mb=v["peak_rss_mb"])
        rows[key] = row
    targets = {}
    big = rows.get("1000000")
    small = rows.get("10000")
    if big and "pipeline_peak_rss_mb" in big:
        targets["rss_1m_gb"] = big["pipeline_peak_rss_mb"] / 1024
        targets["rss_ok"] = targets["rss_1m_gb"] < TARGET_RSS_GB
        targets["wall_1m_s"] = big["pipeline_wall_s"]
        targets["wall_ok"] = big["pipeline_wall_s"] <= TARGET_WALL_S
        if small and "beam_ms_per_user" in small:
            ratio = big["beam_ms_per_user"] / small["beam_ms_per_user"]
            targets["beam_ratio_1m_vs_10k"] = ratio
            targets["beam_ok"] = ratio <= TARGET_BEAM_RATIO
    return {"rows": rows, "targets": targets}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary["rows"].values())
    panels = [
        ("tokenizer fit (s)", [("rqkmeans_fit_s", "RQ-KMeans"), ("rqvae_fit_s", "RQ-VAE")]),
        ("encode all items (s)", [("rqkmeans_encode_s", "RQ-KMeans"), ("rqvae_encode_s", "RQ-VAE")]),
        ("peak RSS (MiB)", [("pipeline_peak_rss_mb", "pipeline"), ("rqvae_peak_rss_mb", "RQ-VAE")]),
        ("memory (MiB)", [("trie_mb", "trie tensors"), ("dense_table_mb", "dense item table")]),
        ("per-user latency (ms)", [("beam_ms_per_user", "beam search"), ("dense_ms_per_user", "dense head")]),
        ("dense head training step (s)", [("dense_train_full_s", "full softmax"),
                                          ("dense_train_sampled_s", "sampled softmax")]),
        ("seconds", [("add_items_s", "add_items 1%"), ("trie_build_s", "trie build"),
                     ("pipeline_wall_s", "pipeline wall")]),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for key, label in series:
            pts = [(r["num_items"], r[key]) for r in rows if r.get(key)]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.loglog(x, y, "o-", label=label)
        ax.set_title(title)
        ax.set_xlabel("catalogue size N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("sid-genrec cost against catalogue size (2 CPU cores, synthetic data)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--parts", nargs="+", default=["pipeline", "rqvae"], choices=list(WORKERS))
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fit-sample", type=int, default=200_000, help="RQ-KMeans fit subsample")
    p.add_argument("--rqvae-sample", type=int, default=100_000, help="RQ-VAE fit subsample")
    p.add_argument("--rqvae-epochs", type=int, default=20)
    p.add_argument("--rqvae-batch", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--dense-steps", type=int, default=5, help="dense-head training steps timed")
    p.add_argument("--dense-negatives", type=int, default=4096, help="sampled-softmax negatives")
    p.add_argument("--beam-users", type=int, default=200)
    p.add_argument("--beam-users-1m", type=int, default=1000)
    p.add_argument("--beam-batch", type=int, default=50)
    p.add_argument("--hist", type=int, default=20, help="history items fed to the search")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return

    results = load_results(args.json)
    if not args.plot_only:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for n in args.sizes:
            for part in args.parts:
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    result = f.name
                cmd = [sys.executable, __file__, "--worker", part, "--size", str(n)]
                cmd += ["--result", result, *worker_args(args)]
                subprocess.run(cmd, check=True, env=env)
                out = json.loads(Path(result).read_text())
                os.unlink(result)
                results["sizes"].setdefault(str(n), {})[part] = out
                results["machine"] = {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                }
                results["summary"] = summarise(results)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
    results["summary"] = summarise(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "scale_summary.json").write_text(json.dumps(results["summary"], indent=1))
    plot(results["summary"], FIGURES / "scale_costs.png")
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
