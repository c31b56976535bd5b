"""How much a reranker of the beam's own lists can gain from simple candidate features.

Runs the beam search of a trained run once on the validation targets of all users (20
beams, history excluded, `--prior_weight` inside the beam), then reorders each list without
any LM call:

- by each feature alone: the beam log-prob, the dense head's log-prob (both renormalised
  over the list), the item's train popularity, its popularity in the 7 / 30 / 180 days
  before the user's last train interaction, and the cosine of its text embedding with the
  mean of the user's last 10 items;
- by `beam + a * dense` for a few weights `a` (no training: the fused start of a ranking head
  that reads both scores);
- by a listwise linear model (softmax cross-entropy over the list) fitted on the users after
  the first `--tune_users`, scored on the first `--tune_users` (the users that pick weights
  in `bench_presets.py`).

NDCG@10 is over all tuning users (a list without the target scores 0), so the ceiling is
the list's hit rate. An upper bound on what a ranking head over these lists can earn from
its features, measured before training one:

    HF_HUB_OFFLINE=1 python benchmarks/bench_rerank_features.py runs/ml1m-large-s0 --prior_weight 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install


def beam_lists(run: str, prior_weight: float, num_beams: int, split_name: str = "valid"):
    """Per user: the beam's candidates [U, K], beam log-probs, dense log-probs, the target."""
    from sid.evaluation import history_batch, load_run_data
    from sid.recommender import Recommender
    from sid.retrieval import BeamSearchConfig

    split, _ = load_run_data(run)
    rec = Recommender.from_run(run, rerank=False)
    beam = BeamSearchConfig(
        num_beams=num_beams,
        prior_weight=prior_weight,
        outcome=split.most_frequent_train_outcome(),
        slots=1,
    )
    items, beam_lp, dense_lp = [], [], []
    with torch.inference_mode():
        for start in range(0, split.num_users, 64):
            users = np.arange(start, min(start + 64, split.num_users))
            ids, mask, seen = history_batch(rec.rec, split, users, split_name, rec.max_items)
            found = rec.retrieve(ids, mask, seen, beam=beam, rerank=False, dense=True)
            top = found.beams.items[:, :num_beams]
            items.append(top)
            beam_lp.append(found.beams.scores[:, :num_beams].float())
            logp = found.dense_logits.float().log_softmax(-1)
            dense_lp.append(logp.gather(1, top.clamp_min(0)))
    gold = torch.as_tensor(split.targets(split_name)[0])
    return split, torch.cat(items), torch.cat(beam_lp), torch.cat(dense_lp), gold


def features(run: str, split, items, beam_lp, dense_lp) -> dict[str, torch.Tensor]:
    valid = items >= 0

    def renormalised(x):
        return x.masked_fill(~valid, -1e9).log_softmax(-1)

    out = {"beam": renormalised(beam_lp), "dense": renormalised(dense_lp)}
    n_items = split.data.num_items
    idx = items.clamp_min(0)
    counts = np.bincount(split.train_items, minlength=n_items)
    out["popularity"] = torch.log1p(torch.as_tensor(counts, dtype=torch.float))[idx]
    ts, offsets = split.train_timestamps, split.train_offsets
    if ts is not None:
        last_t = ts[offsets[1:] - 1].astype(np.int64)[:, None]
        order = np.lexsort((ts, split.train_items))
        key = split.train_items[order].astype(np.int64) * 10**10 + ts[order]
        it = idx.numpy().astype(np.int64) * 10**10
        for days in (7, 30, 180):
            hi = np.searchsorted(key, it + last_t, side="right")
            lo = np.searchsorted(key, it + last_t - days * 86400, side="left")
            out[f"popularity {days} d"] = torch.log1p(torch.as_tensor(hi - lo, dtype=torch.float))
    from safetensors.torch import load_file

    emb = F.normalize(
        load_file(str(Path(run, "embeddings.safetensors")))["embeddings"].float(), dim=-1
    )
    last = np.stack(
        [
            split.train_items[np.clip(np.arange(b - 10, b), a, b - 1)]
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )
    query = F.normalize(emb[torch.as_tensor(last)].mean(1), dim=-1)
    out["text similarity"] = (emb[idx] * query[:, None]).sum(-1)
    return {k: v.masked_fill(~valid, 0.0) for k, v in out.items()}


def ndcg10(score, items, gold, users) -> float:
    valid = items >= 0
    score = score.masked_fill(~valid, -1e9)
    is_pos = items == gold[:, None]
    rank = ((score[:, :, None] < score[:, None, :]).sum(-1) * is_pos).sum(1)
    gain = torch.where(is_pos.any(1) & (rank < 10), 1 / torch.log2(rank.float() + 2), 0.0)
    return float(gain[users].mean())


def listwise_fit(X, items, gold, train, steps=300, lr=0.03, l2=1e-3, seed=0):
    """A linear score over the (standardised) features, fitted by softmax CE over the list."""
    torch.manual_seed(seed)
    valid = items >= 0
    mu, sd = X[valid].mean(0), X[valid].std(0) + 1e-6
    Z = (X - mu) / sd
    is_pos = items == gold[:, None]
    rows = train & is_pos.any(1)
    target = is_pos[rows].float().argmax(1)
    model = torch.nn.Linear(X.shape[-1], 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        s = model(Z[rows]).squeeze(-1).masked_fill(~valid[rows], -1e9)
        loss = F.cross_entropy(s, target) + l2 * (model.weight**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(Z).squeeze(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a train.py run directory with a dense head")
    p.add_argument("--prior_weight", type=float, default=0.0)
    p.add_argument("--num_beams", type=int, default=20)
    p.add_argument("--tune_users", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    split, items, beam_lp, dense_lp, gold = beam_lists(args.run, args.prior_weight, args.num_beams)
    seconds = time.perf_counter() - t0
    feats = features(args.run, split, items, beam_lp, dense_lp)
    tune = torch.arange(len(items)) < args.tune_users
    base = ndcg10(feats["beam"], items, gold, tune)
    hit = float((items == gold[:, None]).any(1)[tune].float().mean())
    res = {"run": args.run, "prior_weight": args.prior_weight, "num_beams": args.num_beams,
           "tune_users": int(tune.sum()), "hit_rate": hit, "beam_seconds": round(seconds, 1),
           "by_feature": {}, "beam_plus_dense": {}, "linear": {}}  # fmt: skip
    print(f"{args.run}, prior weight {args.prior_weight:g}: validation NDCG@10 on the first "
          f"{int(tune.sum())} users, list hit rate {hit:.4f} (the ceiling)")  # fmt: skip
    for name, f in feats.items():
        res["by_feature"][name] = v = ndcg10(f, items, gold, tune)
        print(f"  ordered by {name:20s} {v:.4f}")
    for a in (0.5, 1.0, 2.0):
        res["beam_plus_dense"][a] = v = ndcg10(
            feats["beam"] + a * feats["dense"], items, gold, tune
        )
        print(f"  beam + {a:g} x dense (untrained)  {v:.4f} ({v / base - 1:+.1%})")
    names = list(feats)
    for cols in (["beam", "dense"], names):
        X = torch.stack([feats[c] for c in cols], -1)
        v = ndcg10(listwise_fit(X, items, gold, ~tune), items, gold, tune)
        res["linear"][" + ".join(cols)] = v
        print(f"  linear, listwise fit on the other users: {' + '.join(cols)}: {v:.4f} "
              f"({v / base - 1:+.1%})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
