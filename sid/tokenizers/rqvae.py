"""RQ-VAE SID tokenizer (TIGER): MLP encoder -> residual vector quantiser -> MLP decoder.

x [N, D] --encoder--> z [N, d] --ResidualVQ (L levels, K_l codes)--> z_q, codes [N, L]
--decoder--> x_hat [N, D]. Loss = ||x - x_hat||^2 + commitment (weight beta on each level's
||z_res - sg(code)||^2). Codebooks are k-means initialised on the first batch, updated by EMA,
and codes whose usage drops below a threshold are replaced by batch vectors (dead-code
replacement) — both from `vector_quantize_pytorch.ResidualVQ`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time

import torch
from torch import nn
from tqdm.auto import tqdm
from vector_quantize_pytorch import ResidualVQ

from sid.tokenizers.base import (
    as_embeddings,
    atomic_save_pretrained,
    check_codebook_sizes,
    check_enough_items,
    read_pretrained,
)

logger = logging.getLogger(__name__)


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers through `widths` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAENet(nn.Module):
    """The network: encoder widths D -> hidden... -> d, ResidualVQ on d, mirrored decoder."""

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dims: list[int],
        latent_dim: int,
        codebook_sizes: list[int],
        commitment_weight: float,
        dead_code_threshold: float,
        kmeans_iters: int,
        ema_decay: float,
    ):
        super().__init__()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        uniform = len(set(codebook_sizes)) == 1
        self.rq = ResidualVQ(
            dim=latent_dim,
            num_quantizers=len(codebook_sizes),
            # a tuple gives each level its own size; an int keeps ResidualVQ's faster uniform path
            codebook_size=codebook_sizes[0] if uniform else tuple(codebook_sizes),
            kmeans_init=True,
            kmeans_iters=kmeans_iters,
            commitment_weight=commitment_weight,
            threshold_ema_dead_code=dead_code_threshold,
            decay=ema_decay,
        )

    def codebook(self, level: int) -> torch.Tensor:
        """Level `level`'s codebook [K_l, d]."""
        return self.rq.codebooks[level]

    def forward(self, x: torch.Tensor):
        """x [B, D] -> (x_hat [B, D], codes [B, L], commit loss [L], z [B, d], z_q [B, d])."""
        z = self.encoder(x)
        z_q, codes, commit = self.rq(z)
        return self.decoder(z_q), codes, commit, z, z_q


class RQVAE:
    """RQ-VAE tokenizer.

    Args (keyword-only):
        codebook_sizes: K_l per level (default 3 x 256); levels may differ.
        hidden_dims, latent_dim: encoder widths D -> hidden_dims -> latent_dim (TIGER used
            768 -> 512 -> 256 -> 128 -> 32); the decoder mirrors them.
        commitment_weight: beta of the commitment loss (TIGER: 0.25).
        dead_code_threshold: codes whose EMA usage per batch falls below this are replaced.
        epochs, batch_size, lr: Adam training; large batches keep a CPU fit short and give
            the EMA codebooks enough vectors per code. 150 epochs is what every measured run
            used (early stopping usually ends sooner).
        holdout_fraction, patience: early stopping on the reconstruction + commitment loss of
            a held-out slice; the best weights are kept.
        seed: seeds all randomness (split, init, shuffling, code replacement).
        progress: a tqdm bar over epochs with loss, reconstruction error and per-level
            utilisation, on a terminal only (none in a redirected log); either way the fit
            ends with one log line.
    """

    tokenizer_type = "rqvae"

    def __init__(
        self,
        *,
        codebook_sizes=(256, 256, 256),
        hidden_dims=(512, 256, 128),
        latent_dim: int = 32,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 2.0,
        kmeans_iters: int = 10,
        ema_decay: float = 0.8,
        epochs: int = 150,
        batch_size: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        holdout_fraction: float = 0.05,
        patience: int = 20,
        seed: int = 0,
        progress: bool = True,
    ):
        self.codebook_sizes = check_codebook_sizes(codebook_sizes)
        self.hidden_dims = [int(h) for h in hidden_dims]
        if latent_dim < 1 or any(h < 1 for h in self.hidden_dims):
            raise ValueError(
                f"latent_dim={latent_dim}, hidden_dims={self.hidden_dims} must be >= 1"
            )
        if not 0.0 <= holdout_fraction < 0.5:
            raise ValueError(f"holdout_fraction={holdout_fraction} must be in [0, 0.5)")
        if epochs < 1 or batch_size < 1 or patience < 1:
            raise ValueError(
                f"epochs={epochs}, batch_size={batch_size}, patience={patience} must be >= 1"
            )
        self.latent_dim = int(latent_dim)
        self.commitment_weight = float(commitment_weight)
        self.dead_code_threshold = float(dead_code_threshold)
        self.kmeans_iters = int(kmeans_iters)
        self.ema_decay = float(ema_decay)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.holdout_fraction = float(holdout_fraction)
        self.patience = int(patience)
        self.seed = int(seed)
        self.progress = progress
        self.input_dim: int | None = None
        self.net: RQVAENet | None = None
        self.history: list[dict] = []

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def _build(self, input_dim: int) -> RQVAENet:
        return RQVAENet(
            input_dim=input_dim,
            hidden_dims=self.hidden_dims,
            latent_dim=self.latent_dim,
            codebook_sizes=self.codebook_sizes,
            commitment_weight=self.commitment_weight,
            dead_code_threshold=self.dead_code_threshold,
            kmeans_iters=self.kmeans_iters,
            ema_decay=self.ema_decay,
        )

    # ------------------------------------------------------------------ training
    def fit(self, X) -> RQVAE:
        """Train on X [N, D]; returns self."""
        X = as_embeddings(X)
        n = X.shape[0]
        n_hold = int(round(self.holdout_fraction * n)) if n >= 20 else 0
        check_enough_items(n - n_hold, self.codebook_sizes)
        self.input_dim = int(X.shape[1])
        # fork_rng: ResidualVQ draws from the global RNG (k-means init, code replacement);
        # seeding it inside a fork makes fits reproducible without disturbing the caller.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            perm = torch.randperm(n)
            hold, train = X[perm[:n_hold]], X[perm[n_hold:]]
            self.net = self._build(self.input_dim)
            self._train(train, hold)
        return self

    def _train(self, train: torch.Tensor, hold: torch.Tensor) -> None:
        net = self.net
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = train.shape[0]
        # k-means init runs on the first batch, which must hold at least K vectors per level
        bs = min(n, max(self.batch_size, max(self.codebook_sizes)))
        # drop a small last batch: EMA code statistics on a handful of vectors kill codes
        steps = max(1, n // bs)
        best, best_state, best_epoch, bad_epochs = math.inf, None, -1, 0
        self.history = []
        start = time.perf_counter()
        # one bar for the whole fit, cleared when done; disable=None: no bar unless stderr is
        # a terminal, so a saved log gets the summary line below and no bar debris
        bar = tqdm(
            range(self.epochs),
            desc="RQ-VAE",
            unit="epoch",
            leave=False,
            mininterval=1.0,
            disable=None if self.progress else True,
        )
        for epoch in bar:
            net.train()
            order = torch.randperm(n)
            used = [torch.zeros(k, dtype=torch.bool) for k in self.codebook_sizes]
            tot = rec_tot = 0.0
            for step in range(steps):
                x = train[order[step * bs : (step + 1) * bs]]
                x_hat, codes, commit, _, _ = net(x)
                rec = (x_hat - x).pow(2).mean()
                loss = rec + commit.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach())
                rec_tot += float(rec.detach())
                for level in range(self.num_levels):
                    used[level][codes[:, level]] = True
            util = [float(u.float().mean()) for u in used]
            record = {"epoch": epoch, "loss": tot / steps, "recon": rec_tot / steps, "util": util}
            if hold.shape[0]:
                net.eval()
                with torch.no_grad():
                    x_hat, _, commit, _, _ = net(hold)
                    record["holdout"] = float((x_hat - hold).pow(2).mean() + commit.sum())
            else:
                record["holdout"] = record["loss"]
            self.history.append(record)
            bar.set_postfix(
                loss=f"{record['loss']:.4g}",
                recon=f"{record['recon']:.4g}",
                util="/".join(f"{u:.0%}" for u in util),
                refresh=False,  # a refresh here would redraw every epoch despite mininterval
            )
            if record["holdout"] < best - 1e-7:
                best, best_epoch, bad_epochs = record["holdout"], epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= self.patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        ran, kept = len(self.history), self.history[best_epoch]
        logger.info(
            f"RQ-VAE fitted: {ran} of {self.epochs} epochs"
            + (" (stopped early)" if ran < self.epochs else "")
            + f", best at epoch {best_epoch + 1}: holdout loss {kept['holdout']:.4g}, recon "
            f"{kept['recon']:.4g}, code use {'/'.join(f'{u:.0%}' for u in kept['util'])}; "
            f"{n} training items in {time.perf_counter() - start:.1f} s"
        )

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> RQVAENet:
        if self.net is None:
            raise ValueError("this RQVAE is not fitted yet; call fit(X) or from_pretrained(dir)")
        return self.net

    @torch.no_grad()
    def _latents(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self._check_fitted()
        X = as_embeddings(X, expected_dim=self.input_dim)
        net.eval()
        z = net.encoder(X)
        z_q, codes, _ = net.rq(z)
        return z, z_q, codes

    def encode(self, X) -> torch.Tensor:
        """X [N, D] -> raw codes LongTensor [N, L]."""
        return self._latents(X)[2].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes LongTensor [N, L] -> reconstructions x_hat [N, D]."""
        net = self._check_fitted()
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(
                f"codes must have shape [N, {self.num_levels}], got {tuple(codes.shape)}"
            )
        z_q = sum(net.codebook(level)[codes[:, level]] for level in range(self.num_levels))
        return net.decoder(z_q)

    @torch.no_grad()
    def last_level_distances(self, X) -> torch.Tensor:
        """X [N, D] -> [N, K_{L-1}]: squared latent distance of the last residual to each code."""
        net = self._check_fitted()
        z, _, codes = self._latents(X)
        partial = sum(
            (net.codebook(level)[codes[:, level]] for level in range(self.num_levels - 1)),
            torch.zeros_like(z),
        )
        return torch.cdist(z - partial, net.codebook(self.num_levels - 1)).pow(2)

    @torch.no_grad()
    def latent_quantization_mse(self, X) -> float:
        """Mean over elements of (z - z_q)^2 in the latent space."""
        z, z_q, _ = self._latents(X)
        return float((z - z_q).pow(2).mean())

    # ------------------------------------------------------------------ artifacts
    def get_config(self) -> dict:
        return {
            "tokenizer_type": self.tokenizer_type,
            "codebook_sizes": self.codebook_sizes,
            "input_dim": self.input_dim,
            "hidden_dims": self.hidden_dims,
            "latent_dim": self.latent_dim,
            "commitment_weight": self.commitment_weight,
            "dead_code_threshold": self.dead_code_threshold,
            "kmeans_iters": self.kmeans_iters,
            "ema_decay": self.ema_decay,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "holdout_fraction": self.holdout_fraction,
            "patience": self.patience,
            "seed": self.seed,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (the network's state dict) atomically."""
        net = self._check_fitted()
        atomic_save_pretrained(save_directory, self.get_config(), net.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> RQVAE:
        config, tensors = read_pretrained(directory, expected_type=cls.tokenizer_type)
        config = dict(config)
        config.pop("tokenizer_type")
        input_dim = int(config.pop("input_dim"))
        tok = cls(**config, progress=False)
        tok.input_dim = input_dim
        net = tok._build(input_dim)
        try:
            net.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{directory}: model.safetensors does not match config.json ({err})"
            ) from err
        net.eval()
        tok.net = net
        return tok
