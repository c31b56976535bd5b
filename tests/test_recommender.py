"""Recommender: one serving object over a trained run (item ids in, top-k item ids out)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import pipeline_options, write_cycle_dataset

from sid import metrics as M
from sid.evaluation import evaluate_run, history_batch, load_run_data
from sid.recommender import METHODS, Recommender, left_pad
from sid.retrieval import BeamSearchConfig

EVAL = dict(num_beams=10, top_k=10, batch_size=16, write_report=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sid.run import run_training

    root = tmp_path_factory.mktemp("recommender")
    data = write_cycle_dataset(root)
    # a ranking head and a dense head: every method can be served
    return run_training(*pipeline_options(data, root / "run", dense=True))


@pytest.fixture(scope="module")
def recommender(run):
    return Recommender.from_run(run, device="cpu")


@pytest.fixture(scope="module")
def split(run):
    return load_run_data(run)[0]


def split_histories(split, users, which="test"):
    """(item-id histories, outcome-label histories) of kept users, as a caller would hold them."""
    data = split.data
    items, outcomes = [], []
    for u in users:
        it, out = split.history(u, which)
        items.append([data.item_ids[i] for i in it])
        outcomes.append([data.outcome_labels[o] for o in out])
    return items, outcomes


def test_from_run_loads_every_part_and_exposes_the_catalogue(recommender, split):
    assert recommender.item_ids == split.data.item_ids
    assert recommender.outcomes == list(split.data.outcome_labels)
    assert recommender.methods == METHODS  # ranker and dense head both trained
    assert recommender.default_method == "beam+ranking"
    assert recommender.max_items == 6  # the run's history window (config.json model.max_items)
    assert recommender.default_outcome == split.most_frequent_train_outcome() == "click"
    fingerprint = json.loads((recommender.run_dir / "model" / "sid_vocab.json").read_text())
    assert recommender.model_fingerprint == fingerprint["model_fingerprint"]


@pytest.mark.parametrize("method", METHODS)
def test_recommend_returns_k_distinct_catalogue_ids_per_user_best_first(recommender, method):
    histories = [["m1", "m2", "m3"], ["m20"], [], ["m5", "m6", "m7", "m8", "m9", "m10", "m11"]]
    top = recommender.recommend(histories, k=7, method=method)
    assert top.method == method
    assert top.scores.shape == top.indices.shape == (4, 7)
    catalogue = set(recommender.item_ids)
    for user, items in enumerate(top.items):
        assert len(items) == 7 and len(set(items)) == 7 and set(items) <= catalogue
        assert items == [recommender.item_ids[i] for i in top.indices[user].tolist()]
        assert not set(items) & set(histories[user])  # seen items are excluded by default
    assert torch.isfinite(top.scores).all()
    assert (top.scores[:, :-1] >= top.scores[:, 1:]).all()


def test_exclude_seen_leaves_out_the_history_and_pads_when_too_few_are_left(recommender):
    seen = [f"m{i}" for i in range(25)]  # 5 of the 30 items left unseen
    for method in ("beam", "dense"):
        top = recommender.recommend([seen], k=10, method=method, num_beams=30)
        assert sorted(top.items[0]) == sorted(f"m{i}" for i in range(25, 30))
        assert (top.indices[0, 5:] == -1).all() and torch.isneginf(top.scores[0, 5:]).all()
        kept = recommender.recommend([seen], k=10, method=method, num_beams=30, exclude_seen=False)
        assert len(kept.items[0]) == 10 and set(kept.items[0]) & set(seen)


def test_recommend_ranks_exactly_as_evaluate_run_for_the_same_users(run, recommender, split):
    results = evaluate_run(run, max_users=24, **EVAL)
    users = np.arange(24)
    gold = split.targets("test")[0][users]
    items, outcomes = split_histories(split, users)
    kinds = {
        "beam": "retrieval",
        "beam+ranking": "retrieval+ranking",
        "dense": "dense",
        "dense+beam": "dense+beam",
    }
    for method, kind in kinds.items():
        top = recommender.recommend(
            items, k=10, outcomes=outcomes, outcome=results["outcome"], method=method,
            num_beams=10, batch_size=16,
        )  # fmt: skip
        assert M.ranking_metrics(top.indices.numpy(), gold) == results[kind], method
    # and item for item: the index-level call evaluation makes on the same batch
    ids, mask, seen = history_batch(recommender.rec, split, users[:16], "test", 6)
    found = recommender.retrieve(
        ids, mask, seen, beam=BeamSearchConfig(num_beams=10, top_k=10, outcome="click")
    )
    top = recommender.recommend(
        items[:16], k=10, outcomes=outcomes[:16], method="beam", num_beams=10
    )
    assert torch.equal(top.indices, found.beams.items)
    ranked = recommender.recommend(items[:16], k=10, outcomes=outcomes[:16], num_beams=10)
    assert torch.equal(ranked.indices, found.ranked.items)


def test_an_unknown_item_id_is_refused_by_name_or_skipped(recommender):
    with pytest.raises(ValueError, match=r"user 1: item id 'nope' \(position 1\) is not in"):
        recommender.recommend([["m1"], ["m2", "nope"]], k=3)
    skipped = recommender.recommend([["m2", "nope", "m3"]], k=3, unknown_items="skip")
    plain = recommender.recommend([["m2", "m3"]], k=3)
    assert skipped.items == plain.items
    with pytest.raises(ValueError, match="a list of item-id sequences"):
        recommender.recommend("m1", k=3)
    with pytest.raises(ValueError, match="history of user 0 is the string 'm1'"):
        recommender.recommend(["m1", "m2"], k=3)


def test_the_outcome_arguments_are_validated(recommender):
    with pytest.raises(ValueError, match=r"outcome 'like' is not one of the run's outcomes"):
        recommender.recommend([["m1"]], k=3, outcome="like")
    with pytest.raises(ValueError, match=r"user 0: outcome 'buy' \(position 1\)"):
        recommender.recommend([["m1", "m2"]], k=3, outcomes=[["click", "buy"]])
    with pytest.raises(ValueError, match="user 0: 1 outcome labels for 2 items"):
        recommender.recommend([["m1", "m2"]], k=3, outcomes=[["click"]])
    with pytest.raises(ValueError, match="takes one outcome label"):
        recommender.recommend([["m1"]], k=3, outcome={"click": 2, "save": 1}, method="dense")
    with pytest.raises(ValueError, match="method must be one of"):
        recommender.recommend([["m1"]], k=3, method="sasrec")
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        recommender.recommend([["m1"]], k=0)
    # the outcome changes what is decoded; a budget returns that many per outcome
    budget = recommender.recommend([["m1", "m2"]], k=3, outcome={"click": 2, "save": 1})
    assert len(budget.items[0]) == 3
    save = recommender.recommend([["m1", "m2"]], k=5, outcome="save", method="beam")
    click = recommender.recommend([["m1", "m2"]], k=5, outcome="click", method="beam")
    assert not torch.equal(save.scores, click.scores)


def test_a_run_loaded_without_its_ranker_serves_beam_and_says_why_not_ranking(run):
    plain = Recommender.from_run(run, rerank=False)
    assert plain.ranker is None and plain.default_method == "beam"
    with pytest.raises(ValueError, match="needs a ranking head"):
        plain.recommend([["m1"]], k=3, method="beam+ranking")


def test_a_ranker_of_another_model_is_refused_at_load(run, tmp_path):
    copy = shutil.copytree(run, tmp_path / "run")
    config_file = copy / "ranker" / "config.json"
    config = json.loads(config_file.read_text())
    config["outcomes"] = ["a", "b"]  # same shapes, other labels
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="belongs to another model"):
        Recommender.from_run(copy)


def test_history_tensors_match_per_user_token_sequences(recommender, split):
    users = np.array([0, 5, 9])
    ids, mask, seen = history_batch(recommender.rec, split, users, "valid", 4)
    rec = recommender.rec
    sequences = []
    for u in users:
        items, outs = split.history(u, "valid")
        sequences.append(rec.history_tokens(items[-4:], outs[-4:]))
    want_ids, want_mask = left_pad(sequences, rec.tokenizer.pad_token_id)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    full = [torch.as_tensor(split.history(u, "valid")[0]) for u in users]
    assert torch.equal(seen, left_pad(full, -1)[0])


def test_evaluate_run_reports_curves_codebook_usage_and_provenance(run, recommender, split):
    res = evaluate_run(run, max_users=16, **EVAL)
    curves = res["recall_curve"]
    assert set(curves) == {"retrieval", "popularity", "dense", "retrieval+ranking"}
    assert len(curves["retrieval"]) == 10 and len(curves["popularity"]) == 100
    assert curves["retrieval"][9] == res["retrieval"]["recall@10"]
    assert curves["popularity"][9] == res["popularity"]["recall@10"]
    assert all(a <= b for a, b in zip(curves["dense"], curves["dense"][1:], strict=False))
    levels = len(res["per_level_accuracy"]["teacher_forced"])
    assert len(res["per_level_accuracy"]["popularity"]) == levels
    sids = recommender.rec.sids
    assert res["codebook_sizes"] == sids.codebook_sizes
    assert res["num_base_levels"] == sids.num_base_levels == 2
    assert [sum(level) for level in res["codebook_usage"]] == [len(sids)] * levels
    assert res["data_summary"]["kept_users"] == split.num_users == 40
    assert set(res["options"]) == {"data", "sid", "model", "run", "training_arguments"}
    assert res["options"]["training_arguments"]["num_train_epochs"] > 0
    assert res["options"]["model"]["max_items"] == 6
    assert res["hardware"]["device"] == "cpu"
    assert res["eval_seconds"] > 0
    assert res["model_fingerprint"] == recommender.model_fingerprint


def test_dense_prior_in_the_beam_is_served_and_evaluated_alike(
    run, recommender, split, monkeypatch
):
    results = evaluate_run(run, max_users=24, prior_weight=0.7, rerank=False, **EVAL)
    assert results["prior_weight"] == 0.7
    users = np.arange(24)
    gold = split.targets("test")[0][users]
    items, outcomes = split_histories(split, users)
    top = recommender.recommend(
        items, k=10, outcomes=outcomes, outcome=results["outcome"], method="beam",
        num_beams=10, batch_size=16, prior_weight=0.7,
    )  # fmt: skip
    assert M.ranking_metrics(top.indices.numpy(), gold) == results["retrieval"]
    plain = recommender.recommend(items, k=10, outcomes=outcomes, method="beam", num_beams=10)
    assert not torch.equal(plain.scores, top.scores)  # the prior is in the scores
    monkeypatch.setattr(recommender.rec, "dense", None)
    with pytest.raises(ValueError, match="no dense head"):
        recommender.recommend(items[:2], k=5, method="beam", prior_weight=0.5)
