"""Several items per decoding step (`--slots k`): slot tokens in the vocabulary, the slot
segments of training and their 4D mask, slot decoding from one history encoding, the slots'
merged lists, the dense head's slot mixture, and train.py / eval.py end to end."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import pipeline_options, write_cycle_dataset
from test_training import cyclic_data, synthetic_sids

from sid.data import leave_one_out
from sid.model import SIDRecModel
from sid.retrieval import constrained_beam_search
from sid.training import (
    IGNORE,
    SIDCollator,
    build_train_windows,
    joint_dense_loss,
    slot_attention_mask,
)
from sid.vocab import SIDVocab

SLOTS = 3


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    sids = synthetic_sids()
    rec = SIDRecModel.build(
        "tiny", sids, ["like", "watch"], slots=SLOTS, hidden_size=32, intermediate_size=64
    )
    rec.lm.eval()
    return rec, leave_one_out(cyclic_data())


def test_slot_tokens_are_bound_and_saved(setup):
    rec, _ = setup
    vocab = rec.vocab
    assert vocab.slot_tokens() == ["<next_2>", "<next_3>"]
    assert [rec.tokenizer.convert_ids_to_tokens(vocab.slot_id(j)) for j in (2, 3)] == [
        "<next_2>",
        "<next_3>",
    ]
    again = SIDVocab.from_dict(vocab.to_dict())
    assert again.slots == SLOTS and again.slot_ids == vocab.slot_ids
    assert rec.lm.get_input_embeddings().weight.shape[0] > max(vocab.slot_ids)
    assert (vocab.token_levels_codes(torch.tensor(vocab.slot_ids))[0] == -1).all()
    with pytest.raises(ValueError, match="slot 1 has no token"):
        vocab.slot_id(1)
    with pytest.raises(ValueError, match="slots must be an int >= 1"):
        SIDVocab([4, 4], ["like"], slots=0)
    assert "slots" not in SIDVocab([4, 4], ["like"]).to_dict()  # one slot: as before


def _collate(rec, split, anchors=100):
    columns = build_train_windows(split, rec.sids, rec.vocab, max_items=8)
    feats = [
        {"input_ids": columns["input_ids"][i], "labels": columns["labels"][i], "slot_train": True}
        for i in range(4)
    ]
    collator = SIDCollator(
        rec.tokenizer.pad_token_id,
        slots=SLOTS,
        slot_ids=tuple(rec.vocab.slot_ids),
        slot_anchors=anchors,
        num_levels=rec.vocab.num_levels,
    )
    return feats, collator(feats)


def test_segments_are_the_later_items_under_their_outcome(setup):
    rec, split = setup
    feats, batch = _collate(rec, split)
    L = rec.vocab.num_levels
    S = 1 + L
    M = max(len(f["input_ids"]) for f in feats)
    for row, f in enumerate(feats):
        ids = torch.tensor(f["input_ids"]).view(-1, S)
        labels = torch.tensor(f["labels"]).view(-1, S)
        seg = batch["segment"][row]
        assert (seg[: len(f["input_ids"])] == 0).all() and (
            seg[len(f["input_ids"]) : M] == -1
        ).all()
        n_seg = int(seg.max())
        expect = 0
        for j in range(2, SLOTS + 1):  # every anchor whose item j - 1 places later is a target
            expect += sum(
                1 for i in range(1, ids.shape[0] - (j - 1)) if labels[i + j - 1, 1] != IGNORE
            )
        assert n_seg == expect
        for s in range(1, n_seg + 1):
            at = (seg == s).nonzero().flatten()
            tok, pos = batch["input_ids"][row, at], batch["position_ids"][row, at]
            anchor = int(batch["visible"][row, at[0]]) // S
            slot = rec.vocab.slot_ids.index(int(tok[1])) + 2
            target = ids[anchor + slot - 1]  # <o> s_1 … s_L of the item slot - 1 places later
            assert tok[0] == target[0] and torch.equal(tok[2:], target[1:])
            assert pos.tolist() == [
                anchor * S,
                anchor * S,
                *range(anchor * S + 1, anchor * S + 1 + L),
            ]
            assert batch["labels"][row, at].tolist() == [IGNORE, IGNORE, *target[1:].tolist()]
    # a small anchor budget caps the segments per slot
    _, few = _collate(rec, split, anchors=1)
    assert int(few["segment"].max()) <= SLOTS - 1


def test_segments_see_only_their_history_and_leave_the_examples_alone(setup):
    rec, split = setup
    feats, batch = _collate(rec, split)
    lm = rec.lm
    mask = slot_attention_mask(batch["segment"], batch["visible"])
    with torch.no_grad():
        packed = lm(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]
        ).logits
        for row, f in enumerate(feats):
            n = len(f["input_ids"])
            alone = lm(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[row, :n], alone, atol=1e-4, rtol=1e-4)
            seg = batch["segment"][row]
            for s in (1, int(seg.max())):
                at = (seg == s).nonzero().flatten()
                vis = int(batch["visible"][row, at[0]])
                ids = torch.cat([torch.tensor(f["input_ids"][:vis]), batch["input_ids"][row, at]])
                pos = torch.cat([torch.arange(vis), batch["position_ids"][row, at]])
                direct = lm(input_ids=ids[None], position_ids=pos[None]).logits[0, vis:]
                torch.testing.assert_close(packed[row, at], direct, atol=1e-4, rtol=1e-4)


def test_slot_training_loss_counts_the_segments(setup):
    rec, split = setup
    _, batch = _collate(rec, split)
    loss, out = joint_dense_loss(rec.lm, batch)
    logits = out.logits
    expect = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE
    )
    torch.testing.assert_close(loss, expect)
    loss.backward()
    grad = rec.lm.get_input_embeddings().weight.grad
    assert grad[rec.vocab.slot_ids].abs().sum() > 0  # the slot tokens learn


def _slot_logprob(rec, history, outcome_id, slot, codes):
    """log p(SID | history, <o>, slot) under the trie, by one plain forward."""
    vocab, trie = rec.vocab, rec.sids.trie
    T = history.shape[0]
    sid = vocab.sid_token_ids(codes)
    if slot == 1:
        ids = torch.cat([history, torch.tensor([outcome_id]), sid[:-1]])
        pos = torch.arange(ids.shape[0])
    else:
        ids = torch.cat([history, torch.tensor([outcome_id, vocab.slot_id(slot)]), sid[:-1]])
        pos = torch.cat([torch.arange(T + 1), torch.arange(T, T + vocab.num_levels)])
    with torch.no_grad():
        logits = rec.lm(input_ids=ids[None], position_ids=pos[None]).logits[0]
    first = T if slot == 1 else T + 1
    total, node = 0.0, torch.zeros(1, dtype=torch.long)
    for level in range(vocab.num_levels):
        start, k = vocab.level_start[level], vocab.codebook_sizes[level]
        allowed = trie.allowed(level, node)[0]
        lg = logits[first + level, start : start + k].masked_fill(~allowed, -1e30)
        total += float(F.log_softmax(lg, -1)[codes[level]])
        node = trie.step(level, node, codes[level : level + 1])
    return total


def test_k_slots_decode_k_lists_from_one_history_and_merge_them(setup):
    rec, split = setup
    history = rec.history_tokens(split.train_items[:5], split.train_outcomes[:5])
    ids, mask = history[None], torch.ones(1, history.shape[0], dtype=torch.long)
    n = len(rec.sids)
    every = constrained_beam_search(
        rec.lm, rec.vocab, rec.sids.trie, ids, mask, num_beams=n, outcome="like", slots=SLOTS
    )
    assert sorted(every.items[0].tolist()) == list(range(n))  # each item once
    like = rec.vocab.outcome_id("like")
    for item, score in zip(every.items[0].tolist(), every.scores[0].tolist(), strict=True):
        per_slot = [_slot_logprob(rec, history, like, j, rec.sids.codes[item]) for j in (1, 2, 3)]
        mixture = torch.tensor(per_slot).logsumexp(0) - math.log(SLOTS)
        assert score == pytest.approx(float(mixture), abs=1e-4)
    # one slot is the model's next-item search; a slot count beyond the model's is refused
    one = constrained_beam_search(
        rec.lm, rec.vocab, rec.sids.trie, ids, mask, num_beams=5, outcome="like", slots=1
    )
    for item, score in zip(one.items[0].tolist(), one.scores[0].tolist(), strict=True):
        assert score == pytest.approx(
            _slot_logprob(rec, history, like, 1, rec.sids.codes[item]), abs=1e-4
        )
    with pytest.raises(ValueError, match="trained with 3 slot"):
        constrained_beam_search(rec.lm, rec.vocab, rec.sids.trie, ids, mask, slots=4)


def test_slots_with_a_budget_and_a_batch_give_valid_distinct_lists(setup):
    rec, split = setup
    hists = [
        rec.history_tokens(split.train_items[i : i + 3 + i], split.train_outcomes[i : i + 3 + i])
        for i in range(3)
    ]
    T = max(h.shape[0] for h in hists)
    ids = torch.stack(
        [F.pad(h, (T - h.shape[0], 0), value=rec.tokenizer.pad_token_id) for h in hists]
    )
    mask = torch.stack([F.pad(torch.ones_like(h), (T - h.shape[0], 0)) for h in hists])
    exclude = torch.tensor([[0, 1], [2, -1], [-1, -1]])
    out = constrained_beam_search(
        rec.lm, rec.vocab, rec.sids.trie, ids, mask, num_beams=12,
        outcome={"like": 4, "watch": 2}, exclude_items=exclude,
    )  # fmt: skip
    for row in range(3):
        items = out.items[row].tolist()
        assert len(set(items)) == 6 and min(items) >= 0
        assert not set(items) & set(exclude[row].tolist())
        assert (out.outcomes[row] == 0).sum() == 4 and (out.outcomes[row] == 1).sum() == 2
        assert torch.equal(out.codes[row], rec.sids.codes[out.items[row]])
        # the batch changes nothing: each user alone gives the same list
        alone = constrained_beam_search(
            rec.lm, rec.vocab, rec.sids.trie, hists[row][None], torch.ones_like(hists[row])[None],
            num_beams=12, outcome={"like": 4, "watch": 2}, exclude_items=exclude[row : row + 1],
        )  # fmt: skip
        assert alone.items[0].tolist() == items


def test_the_dense_head_scores_the_slots_mixture(setup):
    from sid.dense import DenseConfig, DenseRetrieval, dense_logits

    rec, split = setup
    dense = DenseRetrieval(DenseConfig(num_items=len(rec.sids), hidden_size=32))
    dense.attach(rec.lm, rec.vocab, rec.sids)
    h1 = rec.history_tokens(split.train_items[:4], split.train_outcomes[:4])
    h2 = rec.history_tokens(split.train_items[4:6], split.train_outcomes[4:6])
    pad = rec.tokenizer.pad_token_id
    ids = torch.stack([h1, F.pad(h2, (h1.shape[0] - h2.shape[0], 0), value=pad)])
    mask = torch.stack(
        [torch.ones_like(h1), F.pad(torch.ones_like(h2), (h1.shape[0] - h2.shape[0], 0))]
    )
    like = rec.vocab.outcome_id("like")
    got = dense_logits(rec.lm, dense, ids, mask, like, slot_ids=rec.vocab.slot_ids)
    for row, h in enumerate((h1, h2)):
        T = h.shape[0]
        logps = []
        for j in (1, 2, 3):
            extra = [like] if j == 1 else [like, rec.vocab.slot_id(j)]
            x = torch.cat([h, torch.tensor(extra)])
            pos = torch.cat([torch.arange(T + 1), torch.tensor([T] * (len(extra) - 1))])
            with torch.no_grad():
                state = rec.lm.base_model(input_ids=x[None], position_ids=pos[None])
            logps.append(F.log_softmax(dense.scores(state.last_hidden_state[0, -1]), -1))
        expect = torch.stack(logps).logsumexp(0) - math.log(3)
        torch.testing.assert_close(got[row], expect, atol=1e-4, rtol=1e-4)
    one = dense_logits(rec.lm, dense, ids, mask, like)  # no slots: the outcome token's state
    torch.testing.assert_close(
        F.log_softmax(one[0], -1),
        F.log_softmax(dense_logits(rec.lm, dense, ids[:1], mask[:1], like), -1)[0],
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("dense", [False, True])
def test_train_py_and_eval_with_slots(tmp_path, dense):
    from sid.evaluation import evaluate_run
    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    run = run_training(
        *pipeline_options(
            data, tmp_path / "run", slots=3, target_window=2, dense=dense, ranker=False
        )
    )
    saved = SIDRecModel.from_pretrained(run)
    assert saved.vocab.slots == 3
    both = {}
    for k in (1, 3):
        res = evaluate_run(run, slots=k, top_k=5, num_beams=5, write_report=False)
        assert res["slots"] == k and res["validity"]["invalid_sid_rate"] == 0.0
        assert res["validity"]["duplicate_rate"] == 0.0
        both[k] = res
    assert evaluate_run(run, top_k=5, num_beams=5, write_report=False)["slots"] == 3
    with pytest.raises(ValueError, match="at most 3"):
        evaluate_run(run, slots=4, top_k=5, num_beams=5, write_report=False)
    # another slot count retrains the model
    stages = (run / "stages.json").read_text()
    run_training(
        *pipeline_options(
            data, tmp_path / "run", slots=2, target_window=2, dense=dense, ranker=False
        )
    )
    assert (run / "stages.json").read_text() != stages
    assert SIDRecModel.from_pretrained(run).vocab.slots == 2
    assert np.isfinite(both[3]["retrieval"]["recall@5"])
