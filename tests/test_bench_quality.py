"""The SASRec-CE reference of benchmarks/bench_quality.py: it must learn a learnable pattern,
rank the whole catalogue and honour the history-excluded protocol, or the comparison is void."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_training import cyclic_data

from sid.data import leave_one_out

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_left_padding_keeps_the_last_items_shifted_by_one(bench):
    out = bench.left_padded([np.array([4, 5, 6]), np.array([], dtype=np.int64)], 2)
    assert out.tolist() == [[6, 7], [0, 0]]


def test_sasrec_ce_learns_the_cycle_and_excludes_history_on_request(bench):
    split = leave_one_out(cyclic_data(n_users=32, length=14, n_items=40))
    gold = split.targets("test")[0]
    model, seconds = bench.train_sasrec(
        split, epochs=40, max_len=12, batch_size=16, lr=5e-3, d=32, seed=0
    )
    assert seconds > 0
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
