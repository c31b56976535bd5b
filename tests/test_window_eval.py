"""The future-window protocol of eval.py (`--protocol window` on a `--holdout W` run), the
metrics by the targets' own outcome, diversity, and outcome budgets."""

import json

import numpy as np
import pytest
import torch
from conftest import pipeline_options, write_cycle_dataset

from sid import metrics as M
from sid.evaluation import evaluate_run

EVAL = dict(num_beams=10, top_k=10, batch_size=16, write_report=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sid.run import run_training

    root = tmp_path_factory.mktemp("window-eval")
    data = write_cycle_dataset(root)
    common = dict(dense=True, ranker_steps=2, max_steps=6)
    return {
        holdout: run_training(
            *pipeline_options(data, root / f"h{holdout}", holdout=holdout, **common)
        )
        for holdout in (1, 3)
    }


def test_window_metrics_by_hand():
    ranked = torch.tensor([[5, 3, 9, 1], [2, 2, 7, -1], [0, 1, 2, 3]])
    gold = torch.tensor([[3, 1, -1], [7, 7, 8], [-1, -1, -1]])  # user 2 has no window item
    got = M.window_metrics(ranked, gold, ks=(1, 2, 4), ndcg_ks=(2, 4))
    assert got["users"] == 2
    assert (got["hit@1"], got["hit@2"], got["hit@4"]) == (0.0, 0.5, 1.0)
    # user 0 finds 1 of 2 by K=2 and 2 of 2 by K=4; user 1 (7 twice counts once) 1 of 2
    assert got["recall@2"] == pytest.approx(0.25) and got["recall@4"] == pytest.approx(0.75)
    d = 1 / np.log2(np.arange(2, 6))
    assert got["ndcg@2"] == pytest.approx((d[1] / (d[0] + d[1])) / 2)
    assert got["ndcg@4"] == pytest.approx(
        ((d[1] + d[3]) / (d[0] + d[1]) + d[2] / (d[0] + d[1])) / 2
    )
    assert M.window_recall_curve(ranked, gold) == [0.0, 0.5, 1.0, 1.0]
    # one window item: hit@K = recall@K = leave-one-out recall@K, same NDCG
    one = gold[:2, :1]
    single = M.window_metrics(ranked[:2], one, ks=(1, 2, 4), ndcg_ks=(2, 4))
    for k in (2, 4):
        assert (
            single[f"hit@{k}"] == single[f"recall@{k}"] == M.recall_at_k(ranked[:2], one[:, 0], k)
        )
        assert single[f"ndcg@{k}"] == pytest.approx(M.ndcg_at_k(ranked[:2], one[:, 0], k))


def test_diversity_metrics_by_hand():
    ranked = torch.tensor([[5, 3, 9, 1], [2, 2, 7, -1]])
    codes = torch.tensor([[i % 3, i] for i in range(10)])
    # user 0: first codes 2, 0, 0, 1 -> 3 distinct; user 1: 2, 2, 1 -> 2
    assert M.distinct_first_codes(ranked, codes, k=4) == pytest.approx(2.5)
    # orthogonal items: distance 1 between distinct items, 0 between the repeated one
    assert M.intra_list_distance(ranked, torch.eye(10), k=4) == pytest.approx((1 + 4 / 6) / 2)


def test_window_protocol_needs_a_window_split(runs):
    with pytest.raises(ValueError, match="needs a run trained with --holdout W >= 2"):
        evaluate_run(runs[1], protocol="window", **EVAL)
    with pytest.raises(ValueError, match=r"choose a window in \[1, 3\]"):
        evaluate_run(runs[3], protocol="window", window=4, **EVAL)
    with pytest.raises(ValueError, match="--window 2 needs --protocol window"):
        evaluate_run(runs[3], window=2, **EVAL)
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_run(runs[3], protocol="sliding", **EVAL)


def test_window_protocol_scores_the_held_out_window(runs):
    window = evaluate_run(runs[3], protocol="window", **EVAL)
    assert window["protocol"] == "window" and window["window"] == 3
    for kind in ("retrieval", "retrieval+ranking", "dense", "dense+beam", "popularity"):
        row = window[kind]
        assert row["users"] == window["users"]
        for k in M.RECALL_KS:
            assert row[f"hit@{k}"] >= row[f"recall@{k}"] - 1e-12
        assert kind in window["diversity"] and kind in window["by_target_outcome"]
    assert window["recall_curve"]["retrieval"][9] == window["retrieval"]["hit@10"]
    # the first item of the window is the next item: a window of 1 is the "next" protocol
    first = evaluate_run(runs[3], protocol="window", window=1, **EVAL)
    nxt = evaluate_run(runs[3], **EVAL)
    for kind in ("retrieval", "dense", "popularity"):
        for k in (1, 5, 10):
            assert first[kind][f"hit@{k}"] == pytest.approx(nxt[kind][f"recall@{k}"])
            assert first[kind][f"recall@{k}"] == pytest.approx(nxt[kind][f"recall@{k}"])
        assert first[kind]["ndcg@10"] == pytest.approx(nxt[kind]["ndcg@10"])


def test_metrics_by_target_outcome_add_up_and_diversity_is_reported(runs):
    res = evaluate_run(runs[1], **EVAL)
    groups = res["by_target_outcome"]["retrieval"]
    assert set(groups) == {"click", "save"}
    assert sum(g["users"] for g in groups.values()) == res["users"]
    pooled = sum(g["recall@10"] * g["users"] for g in groups.values()) / res["users"]
    assert pooled == pytest.approx(res["retrieval"]["recall@10"])
    diversity = res["diversity"]["retrieval"]
    assert 1 <= diversity["distinct_level0@10"] <= 10
    assert 0 < diversity["intra_list_distance@10"] <= 2


def test_an_outcome_budget_delivers_its_mix(runs):
    kept = evaluate_run(runs[1], outcome={"click": 6, "save": 4}, exclude_history=False, **EVAL)
    assert kept["outcome"] == {"click": 6, "save": 4}
    assert kept["outcome_mix"] == {"click": pytest.approx(0.6), "save": pytest.approx(0.4)}
    assert "dense" not in kept  # the dense head reads one outcome label
    # history excluded: a user who has seen most of the 10 "save" items gets fewer of them,
    # and the other outcome fills the list
    res = evaluate_run(runs[1], outcome={"click": 6, "save": 4}, **EVAL)
    assert 0.3 < res["outcome_mix"]["save"] <= 0.4
    assert res["outcome_mix"]["click"] + res["outcome_mix"]["save"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must sum to --top_k 10"):
        evaluate_run(runs[1], outcome={"click": 6, "save": 2}, **EVAL)


def test_eval_py_writes_a_window_report(runs):
    import eval as eval_py

    eval_py.main([str(runs[3]), "--protocol", "window", "--num_beams", "10", "--top_k", "10"])
    report = runs[3] / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["protocol"] == "window" and "hit@10" in metrics["retrieval"]
    text = (report / "report.md").read_text()
    assert "future window" in text and "| hit@1 |" in text
    assert "## Diversity" in text and "## By the targets' outcome" in text
    assert eval_py.parse_outcome("like:15,watch:5") == {"like": 15, "watch": 5}
    with pytest.raises(ValueError, match="label:count pairs"):
        eval_py.parse_outcome("like:many")
