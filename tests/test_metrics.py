import math

import numpy as np
import pytest
import torch

from sid.metrics import (
    beam_prefix_accuracy,
    coverage_at_k,
    duplicate_rate,
    gold_rank,
    invalid_sid_rate,
    latency_summary,
    mrr,
    ndcg_at_k,
    per_level_accuracy,
    popularity_ranking,
    recall_at_k,
)

RANKED = torch.tensor([[5, 3, 9, -1], [1, 2, 3, 4], [7, 8, -1, -1]])
GOLD = torch.tensor([9, 7, 8])


class TinyTrie:
    """Items 0: (0, 1), 1: (1, 0), 2: (1, 2); codebook sizes [2, 3]."""

    num_levels, codebook_sizes = 2, [2, 3]
    node_child = [torch.tensor([[0, 1]]), torch.tensor([[-1, 0, -1], [1, -1, 2]])]

    def step(self, level, nodes, codes):
        return self.node_child[level][nodes, codes]


def test_gold_rank_is_zero_based_and_minus_one_when_absent():
    assert gold_rank(RANKED, GOLD).tolist() == [2, -1, 1]
    assert gold_rank(RANKED, GOLD, k=2).tolist() == [-1, -1, 1]


def test_recall_ndcg_mrr_match_hand_computed_values():
    assert recall_at_k(RANKED, GOLD, 4) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, GOLD, 2) == pytest.approx(1 / 3)
    assert ndcg_at_k(RANKED, GOLD, 4) == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 3)
    assert ndcg_at_k(RANKED, GOLD, 1) == 0.0
    assert mrr(RANKED, GOLD) == pytest.approx((1 / 3 + 1 / 2) / 3)
    # numpy and lists work too
    assert recall_at_k(RANKED.numpy(), GOLD.tolist(), 3) == pytest.approx(2 / 3)


def test_padding_never_matches_a_missing_gold():
    assert recall_at_k([[-1, -1]], [-1], 2) == 0.0


def test_per_level_accuracy_plain_and_cumulative():
    correct = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=bool)
    assert per_level_accuracy(correct).tolist() == [0.75, 0.75, 0.75]
    assert per_level_accuracy(correct, cumulative=True).tolist() == [0.75, 0.5, 0.25]


def test_beam_prefix_accuracy_counts_gold_prefix_among_beams():
    beams = torch.tensor(
        [
            [[1, 2, 3], [1, 2, 4], [-1, -1, -1]],  # gold (1,2,4): all levels found
            [[0, 2, 4], [1, 0, 4], [1, 2, 0]],  # gold (1,2,4): prefix (1,2) found, full not
            [[2, 2, 4], [3, 2, 4], [0, 0, 0]],  # gold (1,2,4): nothing (same suffix ≠ prefix)
        ]
    )
    gold = torch.tensor([[1, 2, 4], [1, 2, 4], [1, 2, 4]])
    assert beam_prefix_accuracy(beams, gold).tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_invalid_sid_rate_ignores_padding_rows():
    codes = torch.tensor(
        [[[0, 1], [1, 1], [-1, -1]], [[1, 2], [0, 0], [1, 5]]]
    )  # valid, invalid, pad | valid, invalid, out-of-range
    assert invalid_sid_rate(codes, TinyTrie()) == pytest.approx(3 / 5)
    assert invalid_sid_rate(torch.full((2, 2, 2), -1), TinyTrie()) == 0.0


def test_duplicate_rate_counts_repeats_within_a_user():
    items = torch.tensor([[1, 2, 1, 1], [3, 4, -1, -1], [5, -1, 5, -1]])
    assert duplicate_rate(items) == pytest.approx(3 / 8)


def test_coverage_counts_distinct_items_over_all_users():
    items = torch.tensor([[0, 1, 2], [1, 3, -1]])
    assert coverage_at_k(items, 10) == pytest.approx(4 / 10)
    assert coverage_at_k(items, 10, k=1) == pytest.approx(2 / 10)


def test_latency_summary_percentiles_and_throughput():
    s = latency_summary([0.1, 0.2, 0.3, 0.4], [10, 10, 10, 10])
    assert s["p50_ms"] == pytest.approx(250.0)
    assert s["p95_ms"] == pytest.approx(385.0)
    assert s["users_per_s"] == pytest.approx(40 / 1.0)
    assert s["per_user_ms"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="equal-length"):
        latency_summary([0.1], [1, 2])


def test_popularity_ranking_with_and_without_history_exclusion():
    train = np.array([3, 3, 3, 1, 1, 4, 4, 0])  # counts: 3→3, 1→2, 4→2, 0→1, 2→0
    plain = popularity_ranking(train, num_items=5, k=3, num_users=2)
    assert plain.tolist() == [[3, 1, 4], [3, 1, 4]]
    excl = popularity_ranking(train, num_items=5, k=3, exclude=[[3, -1], [1, 0]], chunk_size=1)
    assert excl.tolist() == [[1, 4, 0], [3, 4, 2]]
    short = popularity_ranking(train, num_items=5, k=4, exclude=[[3, 1], [0, 2]])
    assert short.tolist() == [[4, 0, 2, -1], [3, 1, 4, -1]]


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        recall_at_k(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="beam_codes"):
        beam_prefix_accuracy(torch.zeros(2, 3, 2), torch.zeros(2, 3))
