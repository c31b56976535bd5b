"""Future-window training (`--target_window W`): the targets of each position, the LM's
window loss over SIDs, the dense head's multi-positive softmax, and train.py end to end."""

import numpy as np
import pytest
import torch
from conftest import pipeline_options, write_cycle_dataset
from test_training import N_ITEMS, cyclic_data, synthetic_sids

from sid.data import leave_one_out
from sid.dense import DenseConfig, DenseRetrieval, dense_loss, dense_targets
from sid.model import SIDRecModel
from sid.training import (
    IGNORE,
    SIDCollator,
    build_train_windows,
    future_windows,
    joint_dense_loss,
    window_lm_loss,
)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    sids = synthetic_sids()
    rec = SIDRecModel.build("tiny", sids, ["like", "watch"], hidden_size=32, intermediate_size=64)
    return rec, leave_one_out(cyclic_data())


def test_future_windows_are_the_next_items_of_the_same_outcome_inside_train(setup):
    _, split = setup  # users walk the cycle; even items are "like", odd ones "watch"
    window = future_windows(split, 4)
    for user in range(split.num_users):
        lo, hi = split.train_offsets[user], split.train_offsets[user + 1]
        for i in range(lo, hi):
            item = split.train_items[i]
            expect = [item, -1, (item + 2) % N_ITEMS, -1]  # i+1, i+3: the other outcome
            for k in (1, 2, 3):
                if i + k >= hi:  # past the train sequence: validation and test are no targets
                    expect[k] = -1
            assert window[i].tolist() == expect
    np.testing.assert_array_equal(future_windows(split, 1)[:, 0], split.train_items)
    with pytest.raises(ValueError, match="--target_window must be >= 1"):
        future_windows(split, 0)


def test_an_unconditioned_window_takes_the_next_items_whatever_their_outcome(setup):
    _, split = setup  # even items are "like", odd ones "watch"
    window = future_windows(split, 4, same_outcome=False)
    for user in range(split.num_users):
        lo, hi = split.train_offsets[user], split.train_offsets[user + 1]
        for i in range(lo, hi):
            expect = [split.train_items[i + k] if i + k < hi else -1 for k in range(4)]
            assert window[i].tolist() == expect
    np.testing.assert_array_equal(
        future_windows(split, 4, seconds=1, same_outcome=False)[:, 2:], -1
    )


def test_a_time_span_cuts_the_window(setup):
    _, split = setup  # one interaction per second
    full = future_windows(split, 4)
    np.testing.assert_array_equal(future_windows(split, 4, seconds=3), full)
    within_two = future_windows(split, 4, seconds=2)  # item i + 3 comes 3 s later
    np.testing.assert_array_equal(within_two[:, :3], full[:, :3])
    assert (within_two[:, 3] == -1).all()
    assert (future_windows(split, 4, seconds=1)[:, 1:] == -1).all()  # i + 1: other outcome
    with pytest.raises(ValueError, match="--target_window_seconds must be >= 0"):
        future_windows(split, 4, seconds=-1)


def _batch(rec, split, target_window, max_items=6):
    columns = build_train_windows(
        split, rec.sids, rec.vocab, max_items=max_items, target_window=target_window
    )
    collate = SIDCollator(rec.tokenizer.pad_token_id, rec.vocab.sid_token_ids(rec.sids.codes))
    rows = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    return collate(rows[:8])


def test_collator_lays_the_window_out_by_item(setup):
    rec, split = setup
    batch = _batch(rec, split, 4)
    B, n, W = batch["window_items"].shape
    L = rec.vocab.num_levels
    assert (B, W, batch["input_ids"].shape[1]) == (8, 4, n * (1 + L))
    assert batch["window_tokens"].shape == (B, n, W, L)
    items = batch["window_items"]
    tokens = batch["window_tokens"]
    # column 0 is the item the input holds at that place
    sid_tokens = batch["input_ids"].view(B, n, 1 + L)[:, :, 1:]
    real = items[:, :, 0] >= 0
    assert torch.equal(tokens[:, :, 0][real], sid_tokens[real])
    assert (tokens[items < 0] == IGNORE).all()


def test_window_loss_of_one_target_is_the_next_token_cross_entropy(setup):
    rec, split = setup
    batch = _batch(rec, split, 2)
    one = batch["window_tokens"][:, :, :1]  # the item itself only: W = 1
    logits = torch.randn(*batch["input_ids"].shape, len(rec.tokenizer))
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE
    )
    assert torch.allclose(window_lm_loss(logits, batch["labels"], one), plain)
    smooth = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1),
        batch["labels"][:, 1:].flatten(),
        ignore_index=IGNORE,
        label_smoothing=0.1,
    )
    got = window_lm_loss(logits, batch["labels"], one, label_smoothing=0.1)
    assert torch.allclose(got, smooth)


def reference_window_loss(logits, labels, window_tokens) -> float:
    """The window loss position by position, with Python loops."""
    B, n, W, L = window_tokens.shape
    logp = torch.log_softmax(logits.double(), -1)
    total, count = 0.0, 0
    for b in range(B):
        for j in range(n):
            for level in range(L):
                if labels[b, j * (1 + L) + 1 + level] == IGNORE:
                    continue
                own = window_tokens[b, j, 0]
                good = [
                    window_tokens[b, j, k, level]
                    for k in range(W)
                    if window_tokens[b, j, k, 0] != IGNORE
                    and torch.equal(window_tokens[b, j, k, :level], own[:level])
                ]
                total += -sum(float(logp[b, j * (1 + L) + level, t]) for t in good) / len(good)
                count += 1
    return total / count


def test_window_loss_averages_the_targets_that_share_the_fed_prefix(setup):
    rec, split = setup
    batch = _batch(rec, split, 5)
    tokens = batch["window_tokens"].clone()
    # make some window targets share item j's first code, so deeper levels have several answers
    shared = (tokens[:, :, 1:, 0] != IGNORE) & (torch.rand(tokens[:, :, 1:, 0].shape) < 0.5)
    tokens[:, :, 1:, 0] = torch.where(shared, tokens[:, :, :1, 0], tokens[:, :, 1:, 0])
    logits = torch.randn(*batch["input_ids"].shape, len(rec.tokenizer))
    got = float(window_lm_loss(logits, batch["labels"], tokens))
    assert got == pytest.approx(reference_window_loss(logits, batch["labels"], tokens), rel=1e-5)


def test_dense_multi_positive_softmax_matches_its_definition(setup):
    rec, split = setup
    dense = DenseRetrieval(DenseConfig(num_items=len(rec.sids), hidden_size=32))
    wrapper = dense.attach(rec.lm, rec.vocab, rec.sids)
    batch = _batch(rec, split, 5)
    ids, labels, window = batch["input_ids"], batch["labels"], batch["window_items"]
    hidden = torch.randn(*ids.shape, 32)
    got = float(dense_loss(wrapper, hidden, ids, labels, window_items=window))
    targets = dense_targets(wrapper, ids, labels)
    L1 = 1 + rec.vocab.num_levels
    per_position = []
    for b, p in (targets != IGNORE).nonzero().tolist():
        logp = torch.log_softmax(dense.scores(hidden[b, p]).double(), -1)
        positives = [int(i) for i in window[b, p // L1] if i >= 0]
        assert positives[0] == targets[b, p]  # the item itself comes first
        per_position.append(-sum(float(logp[i]) for i in positives) / len(positives))
    assert got == pytest.approx(float(np.mean(per_position)), rel=1e-5)
    # one target: the next-item loss; sampled negatives: finite, lower than the full softmax's
    one = window[:, :, :1]
    assert float(dense_loss(wrapper, hidden, ids, labels, window_items=one)) == (
        pytest.approx(float(dense_loss(wrapper, hidden, ids, labels)), rel=1e-6)
    )
    sampled = dense_loss(wrapper, hidden, ids, labels, window_items=window, num_negatives=4)
    assert torch.isfinite(sampled) and float(sampled) < got


def test_window_training_spreads_the_next_item_over_the_window(setup):
    """Trained with W = 3 on the cycle, the model's first-level guess after an item splits
    between the two items of the same outcome that follow (i and i + 2)."""
    rec, split = setup
    batch = _batch(rec, split, 3, max_items=14)
    opt = torch.optim.AdamW(rec.lm.parameters(), lr=1e-2)
    rec.lm.train()
    for _ in range(150):
        loss, _ = joint_dense_loss(rec.lm, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.lm.eval()
    L = rec.vocab.num_levels
    codes = rec.sids.codes
    start = rec.vocab.level_start[0]
    shares = []
    with torch.no_grad():
        logits = rec.lm(input_ids=batch["input_ids"]).logits
    B, n = batch["window_items"].shape[:2]
    for b in range(B):
        for j in range(1, n):
            item = int(batch["window_items"][b, j, 0])
            after = int(batch["window_items"][b, j, 2])
            if item < 0 or after < 0 or codes[item, 0] == codes[after, 0]:
                continue
            p = logits[b, j * (1 + L), start : start + rec.sids.codebook_sizes[0]].softmax(-1)
            shares.append((float(p[codes[item, 0]]), float(p[codes[after, 0]])))
    now, later = np.array(shares).T
    assert len(shares) > 20
    assert np.median(now + later) > 0.8  # nearly all the mass on the window's two items
    assert np.median(later) > 0.2  # and a real share on the later one, not the next item only


@pytest.mark.parametrize("dense", [False, True])
def test_train_py_trains_with_a_target_window(tmp_path, dense):
    from sid.recommender import Recommender
    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    run = run_training(
        *pipeline_options(data, tmp_path / "run", target_window=3, dense=dense, ranker=False)
    )
    stages = (run / "stages.json").read_text()
    rec = Recommender.from_run(run)
    found = rec.recommend([["m1", "m2", "m3"]], k=5)
    assert len(found.items[0]) == 5 and not {"m1", "m2", "m3"} & set(found.items[0])
    # another window retrains the model, not the SIDs
    again = run_training(
        *pipeline_options(data, tmp_path / "run", target_window=2, dense=dense, ranker=False)
    )
    assert again == run and (run / "stages.json").read_text() != stages


def test_an_unconditioned_run_reads_no_outcome_and_is_scored_on_the_real_ones(tmp_path):
    from sid.evaluation import evaluate_run
    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    options = dict(target_window=2, ranker=False, holdout=2, prefixmem=False)
    run = run_training(
        *pipeline_options(data, tmp_path / "run", outcome_conditioning=False, **options)
    )
    rec = SIDRecModel.from_pretrained(run)
    assert not rec.vocab.conditioned and len(set(rec.vocab.outcome_ids.values())) == 1
    tokens = rec.history_tokens(np.array([0, 3]), np.array([0, 1]))
    assert tokens[0] == tokens[1 + rec.sids.num_levels] == rec.vocab.outcome_id("save")
    kw = dict(protocol="window", top_k=5, num_beams=5, write_report=False)
    under = {o: evaluate_run(run, outcome=o, **kw) for o in ("save", "click")}
    assert under["save"]["retrieval"] == under["click"]["retrieval"]  # the outcome is not read
    assert set(under["save"]["by_target_outcome"]["retrieval"]) == {"save", "click"}
    budget = evaluate_run(run, outcome={"save": 3, "click": 2}, **kw)
    assert budget["validity"]["duplicate_rate"] == 0.0
    stages = (run / "stages.json").read_text()
    run_training(*pipeline_options(data, tmp_path / "run", **options))  # conditioned: retrains
    assert (run / "stages.json").read_text() != stages
    assert SIDRecModel.from_pretrained(run).vocab.conditioned
