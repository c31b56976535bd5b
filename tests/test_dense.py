import json

import numpy as np
import pytest
import torch
from test_training import cyclic_data, synthetic_sids

from sid.data import leave_one_out
from sid.dense import (
    DENSE_BEAM_WEIGHT,
    IGNORE,
    DenseConfig,
    DenseRetrieval,
    dense_loss,
    dense_targets,
    fuse_with_beam,
    fused_scores,
)
from sid.model import SIDRecModel
from sid.training import build_train_windows, joint_dense_loss


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    sids = synthetic_sids()
    rec = SIDRecModel.build("tiny", sids, ["like", "watch"], hidden_size=32, intermediate_size=64)
    dense = DenseRetrieval(DenseConfig(num_items=len(sids), hidden_size=32))
    wrapper = dense.attach(rec.lm, rec.vocab, sids)
    return rec, dense, wrapper, leave_one_out(cyclic_data())


def history(rec, items, outcomes):
    return rec.history_tokens(np.asarray(items), np.asarray(outcomes))[None]


def test_item_is_found_only_at_its_last_sid_token(setup):
    rec, _, wrapper, _ = setup
    ids = history(rec, [3, 7, 5], [0, 1, 0])  # 3 items x (1 + L) tokens
    L1 = 1 + rec.vocab.num_levels
    found = wrapper.item_at(ids)[0].view(3, L1)
    assert found[:, -1].tolist() == [3, 7, 5]
    assert (found[:, :-1] == -1).all()
    # a window that cuts an item's first SID token off never names that item
    assert (wrapper.item_at(ids[:, 2:])[0, : L1 - 2] == -1).all()


def test_item_embedding_is_added_only_where_the_item_is_known(setup):
    rec, dense, wrapper, _ = setup
    ids = history(rec, [3, 7], [0, 1])
    before = wrapper(ids)
    with torch.no_grad():
        dense.items.weight[7] += 1.0
    after = wrapper(ids)
    changed = (after - before).abs().sum(-1)[0] > 0
    L1 = 1 + rec.vocab.num_levels
    assert changed.nonzero().flatten().tolist() == [2 * L1 - 1]
    assert torch.allclose((after - before)[0, 2 * L1 - 1], torch.ones(32))


def test_dense_targets_sit_on_outcome_tokens_of_labelled_items(setup):
    rec, _, wrapper, split = setup
    w = build_train_windows(split, rec.sids, rec.vocab, max_items=5)
    ids, labels = torch.tensor(w["input_ids"][0])[None], torch.tensor(w["labels"][0])[None]
    targets = dense_targets(wrapper, ids, labels)[0].view(5, -1)
    items = split.train_sequence(0)[0][:5]
    assert targets[0, 0] == IGNORE  # the first item has no history, no label
    assert targets[1:, 0].tolist() == items[1:].tolist()
    assert (targets[:, 1:] == IGNORE).all()


def test_fusion_adds_weighted_beam_log_prob_with_a_floor(setup):
    dense = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    items = torch.tensor([[2, 3, -1]])
    scores = torch.tensor([[-0.1, -2.0, float("-inf")]])
    assert fuse_with_beam(dense, items, scores, beam_weight=0.0, k=4).tolist() == [[0, 1, 2, 3]]
    # w = 1: item 2 -> log .2 - .1; items 0/1 get the floor -2.0
    assert fuse_with_beam(dense, items, scores, beam_weight=1.0, k=2).tolist() == [[2, 0]]
    ex = torch.tensor([[2, -1]])
    assert fuse_with_beam(dense, items, scores, beam_weight=1.0, k=2, exclude=ex).tolist() == [
        [0, 1]
    ]


def test_fused_scores_are_what_fusion_ranks_and_excluded_items_score_minus_inf(setup):
    import inspect

    dense = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    items = torch.tensor([[2, 3, -1]])
    scores = torch.tensor([[-0.1, -2.0, float("-inf")]])
    ex = torch.tensor([[1, -1]])
    s = fused_scores(dense, items, scores, beam_weight=1.0, exclude=ex)
    # items 0 and 3 get the floor (-2.0, the lowest beam log-prob), item 2 its own -0.1
    expect = torch.log(torch.tensor([0.4, 0.2, 0.1])) + torch.tensor([-2.0, -0.1, -2.0])
    assert torch.allclose(s[0, [0, 2, 3]], expect)
    assert torch.isneginf(s[0, 1])
    top = fuse_with_beam(dense, items, scores, beam_weight=1.0, k=3, exclude=ex)
    assert torch.equal(top, s.topk(3).indices)
    # the dense head alone needs no beam; a weighted beam does
    assert torch.allclose(fused_scores(dense), dense.log_softmax(-1))
    with pytest.raises(ValueError, match="needs the beam's items and scores"):
        fused_scores(dense, beam_weight=0.5)
    for fn in (fused_scores, fuse_with_beam):
        assert inspect.signature(fn).parameters["beam_weight"].default == DENSE_BEAM_WEIGHT


def test_save_load_and_detach_round_trip(tmp_path, setup):
    rec, dense, _, _ = setup
    ids = history(rec, [1, 2, 4], [1, 0, 1])
    ref = rec.lm(input_ids=ids).logits
    dense.save_pretrained(tmp_path / "dense")
    assert DenseRetrieval.detach(rec.lm) is dense
    plain = rec.lm(input_ids=ids).logits
    assert not torch.allclose(plain, ref)
    loaded = DenseRetrieval.from_pretrained(tmp_path / "dense")
    loaded.attach(rec.lm, rec.vocab, rec.sids)
    assert torch.allclose(rec.lm(input_ids=ids).logits, ref)
    with pytest.raises(ValueError, match="already has a DenseRetrieval"):
        loaded.attach(rec.lm, rec.vocab, rec.sids)
    with pytest.raises(FileNotFoundError, match="config.json"):
        DenseRetrieval.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("negatives", [0, 4])
def test_joint_loss_trains_the_dense_head_to_rank_the_next_item_first(setup, negatives):
    rec, dense, wrapper, split = setup
    assert negatives < len(rec.sids)  # 4: a sampled softmax
    w = build_train_windows(split, rec.sids, rec.vocab, max_items=6)
    ids = torch.tensor([x for x in w["input_ids"] if len(x) == len(w["input_ids"][0])])
    labels = torch.tensor([x for x in w["labels"] if len(x) == ids.shape[1]])
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    opt = torch.optim.AdamW(rec.lm.parameters(), lr=1e-2)
    assert any(p is dense.items.weight for p in rec.lm.parameters())
    rec.lm.train()
    for _ in range(60 if negatives == 0 else 150):  # 4 of 12 items a step: slower
        loss, _ = joint_dense_loss(rec.lm, batch, dense_negatives=negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.lm.eval()
    with torch.no_grad():
        h = rec.lm.base_model(input_ids=ids).last_hidden_state
    targets = dense_targets(wrapper, ids, labels)
    keep = targets != IGNORE
    top1 = dense.scores(h[keep]).argmax(-1)
    assert (top1 == targets[keep]).float().mean() > 0.9


def test_sampled_softmax_scores_the_target_against_the_drawn_items_only(setup):
    rec, dense, wrapper, split = setup
    w = build_train_windows(split, rec.sids, rec.vocab, max_items=6)
    ids = torch.tensor([x for x in w["input_ids"] if len(x) == len(w["input_ids"][0])])
    labels = torch.tensor([x for x in w["labels"] if len(x) == ids.shape[1]])
    hidden = torch.randn(*ids.shape, 32)
    n = len(rec.sids)
    full = dense_loss(wrapper, hidden, ids, labels)
    # as many negatives as items: the full softmax itself
    assert torch.equal(dense_loss(wrapper, hidden, ids, labels, num_negatives=n), full)
    targets = dense_targets(wrapper, ids, labels)
    target = targets[targets != IGNORE]
    torch.manual_seed(3)
    drawn = torch.randint(n, (3,))
    torch.manual_seed(3)
    sampled = dense_loss(wrapper, hidden, ids, labels, num_negatives=3)
    # by hand: target vs the 3 draws, a draw that is the target itself masked out
    h = hidden[targets != IGNORE]
    table = dense.items.weight.detach()
    logits = torch.cat([(h * table[target]).sum(-1, keepdim=True), h @ table[drawn].T], 1)
    logits[:, 1:][drawn[None] == target[:, None]] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros_like(target))
    assert torch.allclose(sampled, expected, atol=1e-6)
    # only the target rows and the drawn rows of the item table receive a gradient
    dense.items.weight.grad = None
    sampled.backward()
    touched = set(dense.items.weight.grad.abs().sum(-1).nonzero().flatten().tolist())
    assert touched <= set(target.tolist()) | set(drawn.tolist()) and touched
    with pytest.raises(ValueError, match="num_negatives"):
        dense_loss(wrapper, hidden, ids, labels, num_negatives=-1)


def test_train_py_run_with_dense_saves_loads_and_reports_dense_rows(tmp_path):
    from conftest import pipeline_options, write_cycle_dataset

    from sid.evaluation import evaluate_run
    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    run = run_training(
        *pipeline_options(data, tmp_path / "run", dense=True, ranker=False, max_steps=30)
    )
    assert (run / "dense" / "config.json").exists()
    rec = SIDRecModel.from_pretrained(run)
    assert rec.dense is not None and rec.prefixmem is not None  # both wrappers, stacked
    assert DenseRetrieval.attached(rec.lm).inner.accepts_prefix_codes
    res = evaluate_run(run, write_report=False, num_beams=10, top_k=10)
    for kind in ("retrieval", "dense", "dense+beam"):
        assert 0.0 <= res[kind]["recall@10"] <= 1.0
    # the cycle is learnable: the dense head alone beats popularity
    assert res["dense"]["recall@10"] > res["popularity"]["recall@10"]


def test_train_py_ranker_reading_dense_scores_trained_on_validation_targets(tmp_path):
    from conftest import pipeline_options, write_cycle_dataset

    from sid.evaluation import evaluate_run
    from sid.ranking import RankingHead
    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    with pytest.raises(ValueError, match="dense"):
        run_training(*pipeline_options(data, tmp_path / "bad", ranker_dense_feature=True))
    run = run_training(
        *pipeline_options(
            data, tmp_path / "run", dense=True, max_steps=30, ranker_steps=4,
            ranker_dense_feature=True, ranker_targets="valid", ranker_tune_users=3,
            ranker_prior_weight=0.5, ranker_exclude_history=True,
        )
    )  # fmt: skip
    head = RankingHead.from_pretrained(run / "ranker")
    assert head.config.score_features == 2
    # the first 3 users' validation lists picked the head's step: before training or after 4
    stats = json.loads((run / "config.json").read_text())["ranker"]
    assert stats["tune_examples"] == 3 and stats["best_step"] in (0, 4)
    assert [step for step, _ in stats["tune_curve"]][0] == 0
    res = evaluate_run(run, write_report=False, num_beams=10, top_k=10, prior_weight=0.5)
    assert 0.0 <= res["retrieval+ranking"]["recall@10"] <= 1.0
    # serving with a budget cannot give one dense score per candidate: refused, said why
    with pytest.raises(ValueError, match="one outcome label"):
        evaluate_run(
            run, write_report=False, num_beams=10, top_k=10, outcome={"click": 5, "save": 5}
        )
