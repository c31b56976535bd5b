"""Residual k-means: ours (sid.tokenizers.RQKMeans) vs the PyPI package semantic-id==0.2.5.

Same data, same levels and codebook size, same seed, side by side in one process. Reports
fit+encode wall time and the quantisation MSE, mean over elements of
(x - decode(encode(x)))^2 — the `quantization_mse` of semantic-id's own evaluate().

    pip install --no-deps -r benchmarks/requirements.txt   # semantic-id, for this benchmark only
    HF_HUB_OFFLINE=1 python benchmarks/bench_rqkmeans.py

Data: ML-1M item embeddings (3,706 x 384, all-MiniLM-L6-v2 on the item texts) and a
synthetic 200,000 x 384 catalogue (unit-norm points around 2,000 random centres).
semantic-id's default n_init is 10 k-means restarts per level; on 200,000 x 384 one restart
with its k-means++ seeding costs minutes on 2 cores, so the synthetic run uses n_init=1 for
it by default (`--their-n-init-synthetic`) — its fastest setting, the least favourable
comparison for us on time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def ml1m_embeddings() -> np.ndarray:
    from sid.data import load_builtin
    from sid.embed import embed_texts

    data = load_builtin("movielens-1m")
    return embed_texts(data.item_texts, show_progress=False)


def synthetic(n: int, d: int = 384, centres: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    X = c[rng.integers(0, centres, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def run_ours(X, *, levels, k, seed):
    from sid.tokenizers import RQKMeans

    t = time.perf_counter()
    tok = RQKMeans(codebook_sizes=(k,) * levels, seed=seed).fit(X)
    codes = tok.encode(X)
    elapsed = time.perf_counter() - t
    mse = float(np.mean((X - tok.decode(codes).numpy()) ** 2))
    return elapsed, mse, codes.numpy()


def run_theirs(X, *, levels, k, seed, n_init):
    from semantic_id import RQKMeans as TheirRQKMeans

    kwargs = {} if n_init is None else {"n_init": n_init}
    t = time.perf_counter()
    tok = TheirRQKMeans(n_levels=levels, n_clusters=k, random_state=seed, **kwargs).fit(X)
    codes = tok.encode(X)
    elapsed = time.perf_counter() - t
    mse = float(np.mean((X - tok.decode(codes)) ** 2))
    return elapsed, mse, codes


def collision_rate(codes: np.ndarray) -> float:
    return 1.0 - np.unique(codes, axis=0).shape[0] / codes.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="ml-1m,synthetic")
    p.add_argument("--synthetic-n", type=int, default=200_000)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--their-n-init-ml1m", type=int, default=None, help="None = their default (10)")
    p.add_argument("--their-n-init-synthetic", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()

    rows = []
    for name in args.datasets.split(","):
        if name == "ml-1m":
            X, n_init = ml1m_embeddings(), args.their_n_init_ml1m
        elif name == "synthetic":
            X, n_init = synthetic(args.synthetic_n, seed=args.seed), args.their_n_init_synthetic
        else:
            raise ValueError(f"unknown dataset {name!r}; use ml-1m and/or synthetic")
        X = np.ascontiguousarray(X, dtype=np.float32)
        common = dict(levels=args.levels, k=args.k, seed=args.seed)
        t_theirs, mse_theirs, c_theirs = run_theirs(X, n_init=n_init, **common)
        t_ours, mse_ours, c_ours = run_ours(X, **common)
        row = {
            "dataset": name,
            "shape": list(X.shape),
            "levels_x_k": f"{args.levels}x{args.k}",
            "their_n_init": 10 if n_init is None else n_init,
            "ours_s": round(t_ours, 2),
            "theirs_s": round(t_theirs, 2),
            "time_ratio": round(t_ours / t_theirs, 3),
            "ours_mse": mse_ours,
            "theirs_mse": mse_theirs,
            "mse_ratio": round(mse_ours / mse_theirs, 4),
            "ours_collision_rate": round(collision_rate(c_ours), 4),
            "theirs_collision_rate": round(collision_rate(c_theirs), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\ntorch threads: {torch.get_num_threads()}")
    print(
        "| data | N x D | L x K | their n_init | ours s | theirs s | time ratio | ours MSE | theirs MSE | MSE ratio | collisions ours / theirs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['shape'][0]} x {r['shape'][1]} | {r['levels_x_k']} | "
            f"{r['their_n_init']} | {r['ours_s']} | {r['theirs_s']} | {r['time_ratio']} | "
            f"{r['ours_mse']:.4e} | {r['theirs_mse']:.4e} | {r['mse_ratio']} | "
            f"{r['ours_collision_rate']} / {r['theirs_collision_rate']} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
