"""SID tokenizers: determinism, save/load round trips, input checks, ML-1M codebook health."""

import inspect
import json
import logging
import warnings

import numpy as np
import pytest
import torch

from sid.codes import SemanticIDs, codebook_health
from sid.tokenizers import (
    RQVAE,
    RQKMeans,
    SIDTokenizer,
    build_sid_tokenizer,
    check_sid_capacity,
    load_sid_tokenizer,
)
from sid.tokenizers.rqkmeans import balanced_assign


def clustered(n=240, d=16, centers=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    return c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)


def tiny_rqvae(**kw):
    opts = dict(
        codebook_sizes=(8, 6),
        hidden_dims=(32, 16),
        latent_dim=8,
        epochs=6,
        batch_size=128,
        progress=False,
        seed=3,
    )
    opts.update(kw)
    return RQVAE(**opts)


def tiny_rqkmeans(**kw):
    opts = dict(codebook_sizes=(8, 6, 4), seed=3)
    opts.update(kw)
    return RQKMeans(**opts)


@pytest.fixture(scope="module")
def X():
    return clustered()


@pytest.mark.parametrize("make", [tiny_rqvae, tiny_rqkmeans], ids=["rqvae", "rqkmeans"])
def test_same_seed_same_codes(make, X):
    a, b = make().fit(X).encode(X), make().fit(X).encode(X)
    assert a.dtype == torch.long and a.shape == (len(X), len(make().codebook_sizes))
    assert torch.equal(a, b)
    for level, k in enumerate(make().codebook_sizes):
        assert int(a[:, level].max()) < k  # per-level sizes differ and are respected


@pytest.mark.parametrize("make", [tiny_rqvae, tiny_rqkmeans], ids=["rqvae", "rqkmeans"])
def test_save_load_round_trip_gives_identical_codes(make, X, tmp_path):
    tok = make().fit(X)
    tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_sid_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok) and isinstance(loaded, SIDTokenizer)
    assert torch.equal(loaded.encode(X), tok.encode(X))
    assert torch.allclose(loaded.decode(tok.encode(X)), tok.decode(tok.encode(X)))
    assert torch.allclose(loaded.last_level_distances(X), tok.last_level_distances(X))
    # saving again over an existing directory replaces it atomically (no tmp dirs left)
    tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_rqkmeans_decode_matches_codes_and_refinement_lowers_error(X):
    plain = tiny_rqkmeans(refine_iters=0).fit(X)
    refined = tiny_rqkmeans(refine_iters=3).fit(X)
    Xt = torch.from_numpy(X)

    def mse(t):
        return float((Xt - t.decode(t.encode(X))).pow(2).mean())

    assert mse(refined) <= mse(plain) + 1e-7
    # last_level_distances agree with the last-level code choice
    assert torch.equal(refined.last_level_distances(X).argmin(1), refined.encode(X)[:, -1])


def test_balanced_rqkmeans_uses_codes_evenly():
    X = clustered(n=256, centers=3, seed=1)  # 3 real clusters, 8 codes: plain k-means is uneven
    codes = RQKMeans(codebook_sizes=(8, 4), balanced=True, seed=0).fit(X).encode(X)
    assert torch.bincount(codes[:, 0], minlength=8).tolist() == [32] * 8


def test_balanced_assign_respects_capacity_and_prefers_nearest():
    dist = torch.tensor([[0.0, 1.0], [0.1, 1.0], [0.2, 0.3], [5.0, 0.0]])
    assert balanced_assign(dist, capacity=2).tolist() == [0, 0, 1, 1]


def test_rqvae_reports_progress_history_and_latent_error(X):
    tok = tiny_rqvae().fit(X)
    assert 1 <= len(tok.history) <= 6
    assert set(tok.history[0]) >= {"loss", "recon", "util", "holdout"}
    assert len(tok.history[0]["util"]) == 2
    assert tok.latent_quantization_mse(X) >= 0.0


def test_rqvae_default_epochs_is_the_measured_150():
    # train.py's --sid_epochs reads this default; every measured run used 150
    assert inspect.signature(RQVAE).parameters["epochs"].default == 150
    assert RQVAE().epochs == 150


@pytest.mark.parametrize(
    "make, line",
    [
        (lambda: tiny_rqvae(progress=True), "RQ-VAE fitted: 6 of 6 epochs"),
        (lambda: tiny_rqkmeans(verbose=True), "RQ-KMeans fitted: 3 levels of 8x6x4 codes"),
    ],
    ids=["rqvae", "rqkmeans"],
)
def test_fit_logs_one_summary_line_and_draws_no_bar_into_a_log(make, line, X, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="sid.tokenizers"), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        make().fit(X)
    assert [r.message for r in caplog.records if r.message.startswith(line)]
    err = capsys.readouterr().err  # not a terminal: the bar stays off, no \r or \x1b[A debris
    assert "\r" not in err and "\x1b[A" not in err


def test_build_sid_tokenizer_dispatches_and_rejects_unknown_kind():
    assert isinstance(build_sid_tokenizer("rqkmeans", codebook_sizes=(4, 4)), RQKMeans)
    assert isinstance(build_sid_tokenizer("rqvae", latent_dim=4), RQVAE)
    with pytest.raises(ValueError, match="unknown SID tokenizer kind 'vqgan'"):
        build_sid_tokenizer("vqgan")


@pytest.mark.parametrize("make", [tiny_rqvae, tiny_rqkmeans], ids=["rqvae", "rqkmeans"])
def test_nan_input_names_the_row(make, X):
    bad = X.copy()
    bad[17, 3] = np.nan
    bad[40, 0] = np.inf
    with pytest.raises(ValueError, match="2 row\\(s\\), first at row 17"):
        make().fit(bad)


@pytest.mark.parametrize("make", [tiny_rqvae, tiny_rqkmeans], ids=["rqvae", "rqkmeans"])
def test_fewer_items_than_codes_says_what_to_change(make):
    with pytest.raises(ValueError, match="only 5 items to fit codebook_sizes\\[0\\]=8.*<= 5"):
        make().fit(clustered(n=5))


def test_encode_with_wrong_dimension_is_refused(X):
    tok = tiny_rqkmeans().fit(X)
    with pytest.raises(
        ValueError, match="dimension 3 but the tokenizer was fitted on dimension 16"
    ):
        tok.encode(np.zeros((2, 3), dtype=np.float32))


def test_capacity_check_refuses_too_small_code_space():
    with pytest.raises(ValueError, match="at most 64 distinct SIDs, fewer than the 100 items"):
        check_sid_capacity(100, [4, 4, 4])
    check_sid_capacity(100, [4, 4, 4], collision_codebook_size=2)


def test_bad_codebook_sizes_and_corrupt_artifacts(tmp_path, X):
    with pytest.raises(ValueError, match="codebook_sizes\\[1\\]=1"):
        RQKMeans(codebook_sizes=(4, 1))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_sid_tokenizer(tmp_path / "nothing")
    tok = tiny_rqkmeans().fit(X)
    tok.save_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["codebook_sizes"] = [9, 6, 4]
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="codebook_0 is missing or has shape \\(8, 16\\)"):
        load_sid_tokenizer(tmp_path / "t")
    with pytest.raises(ValueError, match="holds a 'rqkmeans' tokenizer, not 'rqvae'"):
        RQVAE.from_pretrained(tmp_path / "t")


def test_duplicate_heavy_catalogue_gets_unique_sids_with_both_policies():
    base = clustered(n=30, seed=4)
    X = np.repeat(base, 8, axis=0)  # every embedding 8 times: raw codes must collide
    tok = RQKMeans(codebook_sizes=(8, 8), seed=0).fit(X)
    raw = tok.encode(X)
    for policy in ("suffix", "reassign"):
        sids = SemanticIDs.from_embeddings(
            X, [f"i{i}" for i in range(len(X))], tokenizer=tok, policy=policy
        )
        assert torch.unique(sids.codes, dim=0).shape[0] == len(X)
        h = codebook_health(
            raw, codebook_sizes=tok.codebook_sizes, semantic_ids=sids, embeddings=X, tokenizer=tok
        )
        assert h["collision_rate_before"] >= 7 / 8 - 1e-9
        assert h["largest_collision_group"] >= 8
        assert h["collision_rate_after"] == 0.0
        assert h["reconstruction_mse"] == pytest.approx(h["quantization_mse"])


@pytest.mark.slow
def test_ml1m_rqvae_level1_utilisation_and_unique_sids():
    from sid.data import load_builtin
    from sid.embed import embed_texts

    data = load_builtin("movielens-1m")
    X = embed_texts(data.item_texts, show_progress=False)
    tok = RQVAE(progress=False).fit(X)
    raw = tok.encode(X)
    sids = SemanticIDs.from_codes(raw, data.item_ids, codebook_sizes=tok.codebook_sizes)
    h = codebook_health(
        raw, codebook_sizes=tok.codebook_sizes, semantic_ids=sids, embeddings=X, tokenizer=tok
    )
    print(json.dumps({k: v for k, v in h.items()}, indent=1))
    assert h["levels"][0]["utilisation"] >= 0.9
    assert h["collision_rate_after"] == 0.0
    assert 0.0 <= h["collision_rate_before"] < 0.2
