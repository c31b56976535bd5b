"""Residual k-means (RQ-KMeans): k-means on the residuals, level by level.

Level l clusters r_l = x - sum_{j<l} C_j[c_j] into K_l centroids C_l (scikit-learn `KMeans`,
or `MiniBatchKMeans` for very large catalogues). Encoding is greedy: nearest centroid per
level on the running residual. Decoding sums the chosen centroids.

What makes it cheaper than running `KMeans(n_init=10)` per level at the same error:
- k-means++ seeding, the O(N K D log K) part of a k-means fit, runs on a random subsample
  (then Lloyd on that subsample), and the full-data Lloyd starts from those centroids.
- after the greedy pass, a few rounds of joint codebook refinement: every level's centroids
  are re-solved as least squares given the other levels' codes (a step that can only lower
  the error for fixed codes), then codes are re-assigned. This lowers the quantisation
  error below that of the best of 10 independent greedy fits.
- nearest-centroid assignment is chunked float32 matrix products in torch.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from tqdm.auto import tqdm

from sid.tokenizers.base import (
    as_embeddings,
    atomic_save_pretrained,
    check_codebook_sizes,
    check_enough_items,
    read_pretrained,
)

logger = logging.getLogger(__name__)

_ASSIGN_CHUNK = 65536  # rows per distance block: 65536 x 256 floats = 64 MiB


def squared_distances(R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """||r - c||^2 for all pairs: R [N, D], C [K, D] -> [N, K] (clamped at 0)."""
    d = torch.addmm((C * C).sum(1), R, C.T, beta=1.0, alpha=-2.0)
    d.add_((R * R).sum(1, keepdim=True))
    return d.clamp_min_(0.0)


def nearest_code(R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid: R [N, D], C [K, D] -> LongTensor [N]."""
    out = torch.empty(R.shape[0], dtype=torch.long)
    c_sq = (C * C).sum(1)
    for start in range(0, R.shape[0], _ASSIGN_CHUNK):
        block = R[start : start + _ASSIGN_CHUNK]
        # ||r||^2 is constant per row, so the argmin needs only ||c||^2 - 2 r.c
        out[start : start + block.shape[0]] = torch.addmm(
            c_sq, block, C.T, beta=1.0, alpha=-2.0
        ).argmin(1)
    return out


def balanced_assign(dist: torch.Tensor, *, capacity: int) -> torch.Tensor:
    """Assign rows to columns with at most `capacity` rows per column, nearest first.

    dist: [N, K] costs; requires capacity * K >= N. Each round every unassigned row proposes
    its cheapest open column; a column accepts its cheapest proposals up to its remaining
    capacity and closes when full. Deterministic; returns LongTensor [N].
    """
    n, k = dist.shape
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} codes cannot hold {n} items")
    d = dist.clone()
    labels = torch.full((n,), -1, dtype=torch.long)
    remaining = torch.full((k,), capacity, dtype=torch.long)
    open_rows = torch.arange(n)
    while open_rows.numel() > 0:
        sub = d[open_rows]
        prop = sub.argmin(1)
        cost = sub.gather(1, prop[:, None]).squeeze(1)
        # order proposals by (column, cost): stable sort by cost, then stable sort by column
        by_cost = torch.argsort(cost, stable=True)
        order = by_cost[torch.argsort(prop[by_cost], stable=True)]
        sorted_prop = prop[order]
        counts = torch.bincount(sorted_prop, minlength=k)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel()) - first[sorted_prop]
        accept = rank < remaining[sorted_prop]
        winners = order[accept]
        labels[open_rows[winners]] = prop[winners]
        remaining -= torch.bincount(prop[winners], minlength=k)
        d[:, remaining == 0] = float("inf")
        keep = torch.ones(open_rows.numel(), dtype=torch.bool)
        keep[winners] = False
        open_rows = open_rows[keep]
    return labels


class RQKMeans:
    """Residual k-means SID tokenizer.

    Args (keyword-only):
        codebook_sizes: K_l per level, e.g. (256, 256, 256); levels may differ.
        seed: seeds every random choice; same seed + same data -> same codes.
        algorithm: "kmeans" (Lloyd, scikit-learn KMeans), "minibatch" (MiniBatchKMeans),
            or "auto" (minibatch above `minibatch_threshold` items).
        n_init: k-means restarts per level (each seeded on the subsample).
        max_iter, tol: Lloyd stopping rule (scikit-learn semantics).
        init_sample: seeding subsample size per level; None -> max(40 * K_l, 8192).
        refine_iters: rounds of joint codebook refinement after the greedy pass.
        balanced: assign codes with a per-code capacity of ceil(balance_slack * N / K_l),
            so codes are used evenly (fit and encode; encode balances within its batch).
        verbose: a tqdm bar over the fit's steps (levels, then refinement rounds), on a
            terminal only (none in a redirected log); every fit ends with one log line.
    """

    tokenizer_type = "rqkmeans"

    def __init__(
        self,
        *,
        codebook_sizes=(256, 256, 256),
        seed: int = 0,
        algorithm: str = "auto",
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-4,
        init_sample: int | None = None,
        refine_iters: int = 3,
        balanced: bool = False,
        balance_slack: float = 1.0,
        minibatch_threshold: int = 1_000_000,
        minibatch_size: int = 4096,
        verbose: bool = True,
    ):
        if algorithm not in ("auto", "kmeans", "minibatch"):
            raise ValueError(f"algorithm={algorithm!r}; use 'auto', 'kmeans' or 'minibatch'")
        if n_init < 1 or max_iter < 1 or refine_iters < 0:
            raise ValueError(
                f"n_init={n_init}, max_iter={max_iter}, refine_iters={refine_iters}: "
                "n_init and max_iter must be >= 1, refine_iters >= 0"
            )
        if balance_slack < 1.0:
            raise ValueError(f"balance_slack={balance_slack} must be >= 1.0 (1.0 = exactly even)")
        self.codebook_sizes = check_codebook_sizes(codebook_sizes)
        self.seed = int(seed)
        self.algorithm = algorithm
        self.n_init = int(n_init)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.init_sample = init_sample
        self.refine_iters = int(refine_iters)
        self.balanced = bool(balanced)
        self.balance_slack = float(balance_slack)
        self.minibatch_threshold = int(minibatch_threshold)
        self.minibatch_size = int(minibatch_size)
        self.verbose = verbose
        self.codebooks: list[torch.Tensor] | None = None  # C_l: float32 [K_l, D]
        self.input_dim: int | None = None

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    # ------------------------------------------------------------------ fitting
    def _fit_level(self, R: np.ndarray, k: int, seed: int) -> np.ndarray:
        """k-means on residuals R [N, D] -> centroids [K, D] (float32)."""
        n = R.shape[0]
        use_minibatch = self.algorithm == "minibatch" or (
            self.algorithm == "auto" and n > self.minibatch_threshold
        )
        with warnings.catch_warnings():
            # duplicate-heavy catalogues make scikit-learn warn about fewer distinct points
            warnings.simplefilter("ignore", category=UserWarning)
            if use_minibatch:
                km = MiniBatchKMeans(
                    n_clusters=k,
                    batch_size=self.minibatch_size,
                    n_init=self.n_init,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    random_state=seed,
                )
                return km.fit(R).cluster_centers_.astype(np.float32)
            sample = self.init_sample or max(40 * k, 8192)
            rng = np.random.RandomState(seed)
            best, best_inertia = None, math.inf
            for _ in range(self.n_init):
                run_seed = int(rng.randint(0, 2**31 - 1))
                if n > sample:
                    # Seeding on all N rows dominates the cost of a fit; a subsample plus a
                    # cheap Lloyd pass on it gives centroids the full Lloyd refines quickly.
                    sub = R[np.random.RandomState(run_seed).choice(n, sample, replace=False)]
                    init = (
                        KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=run_seed)
                        .fit(sub)
                        .cluster_centers_
                    )
                else:
                    init, _ = kmeans_plusplus(R, k, random_state=run_seed)
                km = KMeans(
                    n_clusters=k,
                    init=init,
                    n_init=1,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    random_state=run_seed,
                ).fit(R)
                if km.inertia_ < best_inertia:
                    best, best_inertia = km.cluster_centers_, km.inertia_
            return best.astype(np.float32)

    def _assign(self, R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        if not self.balanced:
            return nearest_code(R, C)
        capacity = math.ceil(self.balance_slack * R.shape[0] / C.shape[0])
        return balanced_assign(squared_distances(R, C), capacity=capacity)

    def fit(self, X) -> RQKMeans:
        """Fit the codebooks on X [N, D]; returns self."""
        X = as_embeddings(X)
        check_enough_items(X.shape[0], self.codebook_sizes)
        self.input_dim = int(X.shape[1])
        R = X.clone()
        codebooks, codes = [], []
        start = time.perf_counter()
        # one bar for the whole fit, cleared when done; disable=None: no bar unless stderr is
        # a terminal, so a saved log gets the summary line below and no bar debris
        bar = tqdm(
            total=self.num_levels + self.refine_iters,
            desc="RQ-KMeans",
            unit="step",
            leave=False,
            mininterval=1.0,
            disable=None if self.verbose else True,
        )
        with bar:
            for level in range(self.num_levels):
                C = torch.from_numpy(
                    self._fit_level(R.numpy(), self.codebook_sizes[level], self.seed + 1009 * level)
                )
                c = self._assign(R, C)
                if self.balanced:
                    C = _centroid_means(R, c, C)
                R -= C[c]
                codebooks.append(C)
                codes.append(c)
                bar.set_postfix(
                    level=level, residual_mse=f"{float(R.pow(2).mean()):.4g}", refresh=False
                )
                bar.update()
            self.codebooks = codebooks
            for _ in range(self.refine_iters):
                self._refine(X, torch.stack(codes, 1))
                codes = list(self.encode(X).unbind(1))
                bar.update()
        mse = float((X - self.decode(torch.stack(codes, 1))).pow(2).mean())
        logger.info(
            f"RQ-KMeans fitted: {self.num_levels} levels of "
            f"{'x'.join(map(str, self.codebook_sizes))} codes, {self.refine_iters} refinement "
            f"round(s), quantisation MSE {mse:.4g}; {X.shape[0]} items in "
            f"{time.perf_counter() - start:.1f} s"
        )
        return self

    def _refine(self, X: torch.Tensor, codes: torch.Tensor) -> None:
        """One block-coordinate pass: re-solve each level's centroids given all codes.

        For fixed codes the error sum_i ||x_i - sum_l C_l[c_il]||^2 is least squares in each
        C_l; holding the other levels fixed, its minimiser is the mean of the targets
        x_i - sum_{j != l} C_j[c_ij] over the items with code k at level l.
        """
        recon = self.decode(codes)
        for level, C in enumerate(self.codebooks):
            own = C[codes[:, level]]
            target = X - recon + own
            new_C = _centroid_means(target, codes[:, level], C)
            recon += new_C[codes[:, level]] - own
            self.codebooks[level] = new_C

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if self.codebooks is None:
            raise ValueError("this RQKMeans is not fitted yet; call fit(X) or from_pretrained(dir)")

    def _residual_before_last(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = X.clone()
        codes = torch.empty(X.shape[0], self.num_levels, dtype=torch.long)
        for level, C in enumerate(self.codebooks[:-1]):
            codes[:, level] = self._assign(R, C)
            R -= C[codes[:, level]]
        return R, codes

    def encode(self, X) -> torch.Tensor:
        """X [N, D] -> raw codes LongTensor [N, L] (greedy nearest centroid per level)."""
        self._check_fitted()
        X = as_embeddings(X, expected_dim=self.input_dim)
        R, codes = self._residual_before_last(X)
        codes[:, -1] = self._assign(R, self.codebooks[-1])
        return codes

    def last_level_distances(self, X) -> torch.Tensor:
        """X [N, D] -> float [N, K_{L-1}]: squared distance of the last residual to each code."""
        self._check_fitted()
        X = as_embeddings(X, expected_dim=self.input_dim)
        R, _ = self._residual_before_last(X)
        return squared_distances(R, self.codebooks[-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes LongTensor [N, L] -> reconstructions float [N, D] (sum of centroids)."""
        self._check_fitted()
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(
                f"codes must have shape [N, {self.num_levels}], got {tuple(codes.shape)}"
            )
        out = torch.zeros(codes.shape[0], self.input_dim)
        for level, C in enumerate(self.codebooks):
            out += C[codes[:, level]]
        return out

    # ------------------------------------------------------------------ artifacts
    def get_config(self) -> dict:
        return {
            "tokenizer_type": self.tokenizer_type,
            "codebook_sizes": self.codebook_sizes,
            "input_dim": self.input_dim,
            "seed": self.seed,
            "algorithm": self.algorithm,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "init_sample": self.init_sample,
            "refine_iters": self.refine_iters,
            "balanced": self.balanced,
            "balance_slack": self.balance_slack,
            "minibatch_threshold": self.minibatch_threshold,
            "minibatch_size": self.minibatch_size,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (codebook_0 ... codebook_{L-1}) atomically."""
        self._check_fitted()
        atomic_save_pretrained(
            save_directory,
            self.get_config(),
            {f"codebook_{level}": C for level, C in enumerate(self.codebooks)},
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> RQKMeans:
        config, tensors = read_pretrained(directory, expected_type=cls.tokenizer_type)
        config = dict(config)
        config.pop("tokenizer_type")
        input_dim = config.pop("input_dim")
        tok = cls(**config)
        codebooks = []
        for level, k in enumerate(tok.codebook_sizes):
            C = tensors.get(f"codebook_{level}")
            if C is None or tuple(C.shape) != (k, input_dim):
                raise ValueError(
                    f"{directory}: codebook_{level} is missing or has shape "
                    f"{None if C is None else tuple(C.shape)}, expected {(k, input_dim)}; "
                    "the weights do not match config.json"
                )
            codebooks.append(C.float())
        tok.codebooks, tok.input_dim = codebooks, int(input_dim)
        return tok


def _centroid_means(R: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean of R's rows per label -> [K, D]; codes with no rows keep their old centroid."""
    k = old.shape[0]
    sums = torch.zeros_like(old).index_add_(0, labels, R)
    counts = torch.bincount(labels, minlength=k).to(R.dtype)
    means = sums / counts.clamp_min(1.0)[:, None]
    return torch.where(counts[:, None] > 0, means, old)
