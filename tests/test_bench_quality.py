"""The SASRec-CE reference of benchmarks/bench_quality.py: it must learn a learnable pattern,
rank the whole catalogue and honour the history-excluded protocol, or the comparison is void;
its early stopping must pick the epoch on validation, restore it, and resume from a checkpoint
exactly where an uninterrupted run would be."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from test_training import cyclic_data

from sid.data import leave_one_out

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models gain nothing from threads, and on a busy machine two spinning threads per
    # op made this file take minutes instead of seconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH)


def test_left_padding_keeps_the_last_items_shifted_by_one(bench):
    out = bench.left_padded([np.array([4, 5, 6]), np.array([], dtype=np.int64)], 2)
    assert out.tolist() == [[6, 7], [0, 0]]


def test_sasrec_ce_learns_the_cycle_and_excludes_history_on_request(bench):
    split = leave_one_out(cyclic_data(n_users=32, length=14, n_items=40))
    gold = split.targets("test")[0]
    model, record = bench.train_sasrec(
        split, epochs=40, max_len=12, batch_size=16, lr=5e-3, d=32, seed=0
    )
    assert record["train_seconds"] > 0
    assert record["epochs_run"] == len(record["curve"]) == record["model_epoch"] == 40
    kept = bench.rank_sasrec(model, split, "test", max_len=12, exclude_history=False, k=20)
    assert kept.shape == (split.num_users, 20)
    q = bench.quality(kept, gold)
    # next item of a cycle is fully determined by the last one: popularity would score ~10/40
    assert q["recall@10"] >= 0.9, q
    assert q["ndcg@10"] > 0.5, q
    excluded = bench.rank_sasrec(model, split, "test", max_len=12, exclude_history=True, k=20)
    for user in range(split.num_users):
        history = set(split.history(user, "test")[0].tolist())
        assert not history & set(excluded[user].tolist())


TINY = dict(max_len=12, batch_size=16, lr=5e-3, d=32, seed=0, patience=3, max_epochs=60)


@pytest.fixture(scope="module")
def cycle_split():
    return leave_one_out(cyclic_data(n_users=32, length=14, n_items=40))


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(
    bench, cycle_split, monkeypatch
):
    script = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.9])  # best at epoch 2; a tie is no gain
    monkeypatch.setattr(
        bench, "score_valid", lambda *a, **k: {"ndcg@10": next(script), "recall@10": 0.5}
    )
    model, record = bench.train_sasrec(cycle_split, **TINY)
    assert [row["valid_ndcg@10"] for row in record["curve"]] == [0.1, 0.3, 0.2, 0.3, 0.25]
    assert record["best_epoch"] == record["model_epoch"] == 2
    assert record["stopped"] == "no valid NDCG@10 gain for 3 epochs"
    # the returned weights are epoch 2's (same seed, a fixed 2-epoch budget), not epoch 5's
    monkeypatch.undo()
    two, _ = bench.train_sasrec(cycle_split, **{**TINY, "epochs": 2})
    for (name, p), q in zip(model.state_dict().items(), two.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_the_restored_model_scores_the_best_validation_ndcg_of_its_curve(bench, cycle_split):
    model, record = bench.train_sasrec(cycle_split, **TINY)
    curve = [row["valid_ndcg@10"] for row in record["curve"]]
    best = record["best_epoch"]
    assert record["finished"] and record["epochs_run"] < TINY["max_epochs"], record["stopped"]
    assert curve.index(max(curve)) + 1 == best  # the first maximum
    assert record["epochs_run"] == best + TINY["patience"]
    assert max(curve) > 0.9  # the cycle is learnable
    users = np.arange(cycle_split.num_users)
    restored = bench.score_valid(model, cycle_split, users, max_len=TINY["max_len"])
    assert restored["ndcg@10"] == max(curve)
    assert restored["recall@10"] == record["curve"][best - 1]["valid_recall@10"]


def test_resume_from_the_checkpoint_continues_the_curve(bench, cycle_split, tmp_path, monkeypatch):
    _, whole = bench.train_sasrec(cycle_split, **TINY, run_dir=tmp_path / "whole")
    score_valid = bench.score_valid
    calls = []

    def crash_at_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return score_valid(*args, **kwargs)

    monkeypatch.setattr(bench, "score_valid", crash_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        bench.train_sasrec(cycle_split, **TINY, run_dir=tmp_path / "cut")
    saved = json.loads((tmp_path / "cut" / bench.RECORD).read_text())
    assert saved["epochs_run"] == 3 and not saved["finished"]
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # atomic writes leave no temp files

    calls.clear()
    monkeypatch.setattr(
        bench, "score_valid", lambda *a, **k: calls.append(1) or score_valid(*a, **k)
    )
    model, resumed = bench.train_sasrec(cycle_split, **TINY, run_dir=tmp_path / "cut")
    assert len(calls) == whole["epochs_run"] - 3  # epochs 1-3 were not trained again
    # same weights, Adam moments and RNG states: the curve is the uninterrupted one
    for a, b in zip(resumed["curve"], whole["curve"], strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["valid_ndcg@10"] == pytest.approx(b["valid_ndcg@10"], abs=1e-6)
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert (tmp_path / "cut" / bench.CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a finished run is returned as it is, without training
    calls.clear()
    again, record = bench.train_sasrec(cycle_split, **TINY, run_dir=tmp_path / "cut")
    assert not calls and record["epochs_run"] == resumed["epochs_run"]
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_run_with_other_options_is_refused(bench, cycle_split, tmp_path):
    bench.train_sasrec(cycle_split, **{**TINY, "max_epochs": 2}, run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lr: saved 0.005, now 0.001.*--sasrec_dir"):
        bench.train_sasrec(cycle_split, **{**TINY, "max_epochs": 2, "lr": 1e-3}, run_dir=tmp_path)


def test_the_bench_reuses_a_finished_run_without_training(
    bench, cycle_split, tmp_path, capsys, monkeypatch
):
    args = argparse.Namespace(
        dataset="cyclic", sasrec_dir=str(tmp_path / "run"), figure=str(tmp_path / "fig.png"),
        epochs=None, dropout=0.2, valid_users=0, **TINY,
    )  # fmt: skip
    gold = cycle_split.targets("test")[0]
    first, second = {}, {}
    bench.bench_sasrec(args, cycle_split, gold, (True, False), first.__setitem__)
    saved = json.loads((tmp_path / "run" / bench.RECORD).read_text())
    assert set(saved["test"]) == {"history kept", "history excluded", "recall_curve"}
    curve = saved["test"]["recall_curve"]  # history excluded, K = 1 … min(100, catalogue)
    assert len(curve) == min(bench.CURVE_DEPTH, cycle_split.data.num_items)
    assert curve == sorted(curve) and curve[9] == saved["test"]["history excluded"]["recall@10"]
    assert (tmp_path / "fig.png").read_bytes() == (tmp_path / "run" / bench.CURVE).read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must be reused, not trained")

    monkeypatch.setattr(bench, "train_sasrec", no_training)
    capsys.readouterr()
    bench.bench_sasrec(args, cycle_split, gold, (True, False), second.__setitem__)
    assert "reused" in capsys.readouterr().out
    assert second == first
    args.lr = 1e-3
    with pytest.raises(ValueError, match="other options"):
        bench.bench_sasrec(args, cycle_split, gold, (True,), second.__setitem__)
