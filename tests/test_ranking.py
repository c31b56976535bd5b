import numpy as np
import pytest
import torch
from conftest import random_codes, tiny_llama, unique_semantic_ids, word_tokenizer
from torch import nn

from sid.ranking import (
    DEFAULT_BEAM_WEIGHT,
    RankingHead,
    RankingHeadConfig,
    candidate_embeddings,
    encode_history,
    history_inputs,
    rank_candidates,
    retrieve_and_rank,
)
from sid.ranking_training import RankingExamples, train_ranker
from sid.retrieval import BeamSearchConfig, constrained_beam_search
from sid.vocab import SIDVocab

OUTCOMES = ["like", "watch"]
SIZES = [4, 3, 5]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def one_thread():
    # tiny shapes: several threads only add contention (10x slower on a busy 2-core box)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_setup(n_items=30, seed=0):
    tok = word_tokenizer(["<pad>", "<unk>", "x"])
    vocab = SIDVocab(SIZES, OUTCOMES)
    vocab.add_to_tokenizer(tok)
    lm = tiny_llama(len(tok), seed=seed, max_position_embeddings=512)
    vocab.resize_model(lm)
    sids = unique_semantic_ids(random_codes(n_items, SIZES, seed), SIZES)
    return lm, vocab, sids


def make_head(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = RankingHeadConfig(
        hidden_size=32, num_levels=len(SIZES), outcomes=OUTCOMES, head_size=32, n_heads=4, **kw
    )
    return RankingHead(cfg).eval()


def make_histories(vocab, sids, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = max(lengths)
    n_items = sids.codes.shape[0]
    items = torch.randint(n_items, (len(lengths), M), generator=g)
    outcomes = torch.randint(len(OUTCOMES), (len(lengths), M), generator=g)
    pad = torch.arange(M)[None, :] < (M - torch.tensor(lengths))[:, None]
    items, outcomes = items.masked_fill(pad, -1), outcomes.masked_fill(pad, -1)
    ids, mask = history_inputs(vocab, sids.codes, items, outcomes)
    return ids, mask, items


class CountForwards:
    """Records the sequence length of every call of ``lm.base_model``."""

    def __init__(self, lm):
        self.lengths = []
        self.handle = lm.base_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        self.lengths.append((x if x is not None else kwargs["input_ids"]).shape[1])

    def history_forwards(self, history_length: int) -> int:
        """Calls that fed at least a whole history (decode steps feed at most num_beams)."""
        return sum(n >= history_length for n in self.lengths)


# ----------------------------------------------------------------------------- tests
def test_history_inputs_writes_outcome_then_sid_tokens_left_padded():
    lm, vocab, sids = make_setup()
    items = torch.tensor([[-1, 3, 5], [1, 2, 4]])
    outcomes = torch.tensor([[-1, 0, 1], [1, 1, 0]])
    ids, mask = history_inputs(vocab, sids.codes, items, outcomes)
    L = len(SIZES)
    assert ids.shape == mask.shape == (2, 3 * (L + 1))
    assert mask[0].tolist() == [0] * (L + 1) + [1] * (2 * (L + 1))
    assert ids[0, : L + 1].tolist() == [0] * (L + 1)
    expect = [vocab.outcome_id("like"), *vocab.sid_token_ids(sids.codes[3]).tolist()]
    expect += [vocab.outcome_id("watch"), *vocab.sid_token_ids(sids.codes[5]).tolist()]
    assert ids[0, L + 1 :].tolist() == expect


def test_head_outputs_outcomes_plus_none_logits_and_ignores_history_padding():
    lm, vocab, sids = make_setup()
    head = make_head()
    ids, mask, _ = make_histories(vocab, sids, [3, 5])
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
        emb = candidate_embeddings(lm, vocab, sids.codes[torch.tensor([[0, 1, 2], [3, 4, 5]])])
        logits = head(states, mask, emb)
        assert logits.shape == (2, 3, len(OUTCOMES) + 1)
        # garbage in padded history positions changes nothing
        noisy = states.where(mask[..., None].bool(), torch.randn_like(states) * 100)
        assert torch.allclose(head(noisy, mask, emb), logits, atol=1e-5)
        # an all-padding history still gives finite logits (the null memory slot)
        assert torch.isfinite(head(states, torch.zeros_like(mask), emb)).all()


def test_extra_candidate_vectors_start_as_a_no_op_and_are_shape_checked():
    lm, vocab, sids = make_setup()
    head = make_head()
    ids, mask, _ = make_histories(vocab, sids, [3, 2])
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
        emb = candidate_embeddings(lm, vocab, sids.codes[torch.tensor([[0, 1], [2, 3]])])
        extra = torch.randn(2, 2, head.config.extra_size)
        plain = head(states, mask, emb)
        assert torch.equal(head(states, mask, emb, extra), plain)  # zero-initialised projection
        head.extra_proj.weight.normal_()
        assert not torch.allclose(head(states, mask, emb, extra), plain)
        with pytest.raises(ValueError, match="extra must be"):
            head(states, mask, emb, extra[:, :1])


def test_returned_order_is_argsort_of_final_scores_and_candidate_permutation_changes_nothing():
    lm, vocab, sids = make_setup()
    head = make_head()
    ids, mask, _ = make_histories(vocab, sids, [4, 6, 2])
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
    g = torch.Generator().manual_seed(1)
    items = torch.stack([torch.randperm(30, generator=g)[:12] for _ in range(3)])
    items[1, 3] = -1
    items[2, -2:] = -1
    beam = torch.randn(3, 12, generator=g)
    out = rank_candidates(
        head, lm, vocab, sids, states, mask, items, beam_scores=beam, beam_weight=0.3
    )
    # each returned item's score is the final score of that item, sorted descending
    valid = out.items >= 0
    assert valid.sum(1).tolist() == [12, 11, 10]
    assert (valid[:, :-1] >= valid[:, 1:]).all()  # missing candidates last
    f = out.final_scores
    assert torch.equal(f.sort(dim=-1, descending=True, stable=True).values, f)
    assert torch.isneginf(f[~valid]).all()
    blended = 0.7 * out.rank_scores + 0.3 * _beam_prob(items, beam, out.items)
    assert torch.allclose(f[valid], blended[valid], atol=1e-6)

    perm = torch.randperm(12, generator=g)
    out_p = rank_candidates(
        head, lm, vocab, sids, states, mask, items[:, perm], beam_scores=beam[:, perm],
        beam_weight=0.3,
    )  # fmt: skip
    assert torch.equal(out_p.items, out.items)
    assert torch.allclose(out_p.final_scores[valid], out.final_scores[valid], atol=1e-6)
    assert torch.allclose(out_p.probs, out.probs, atol=1e-6)

    # the order is the argsort of each candidate's own final score, computed one at a time
    alone = torch.cat(
        [rank_candidates(head, lm, vocab, sids, states, mask, items[:, j : j + 1],
                         beam_weight=0.0).rank_scores
         for j in range(12)], 1,
    )  # fmt: skip
    beam_p = beam.masked_fill(items < 0, float("-inf")).softmax(-1)
    expect = (0.7 * alone + 0.3 * beam_p).masked_fill(items < 0, float("-inf"))
    expect_order = expect.argsort(dim=-1, descending=True, stable=True)
    assert torch.equal(items.gather(1, expect_order).where(valid, -1), out.items)


def _beam_prob(items, beam, ranked_items):
    """Renormalised beam probability over each user's valid candidates, in ranked order."""
    p = beam.masked_fill(items < 0, float("-inf")).softmax(-1)
    out = torch.zeros(ranked_items.shape)
    for b in range(items.shape[0]):
        for j, it in enumerate(ranked_items[b].tolist()):
            if it >= 0:
                out[b, j] = p[b][items[b] == it]
    return out


def test_retrieve_and_rank_reuses_the_prefill_states_without_a_second_history_forward():
    lm, vocab, sids = make_setup()
    head = make_head()
    ids, mask, hist = make_histories(vocab, sids, [5, 3])
    beam = BeamSearchConfig(num_beams=8, outcome="like")

    alone = CountForwards(lm)
    beams = beam.search(lm, vocab, sids.trie, ids, mask, hist)
    alone.handle.remove()

    seen = {}
    original_forward = head.forward

    def spy(history_states, history_mask, candidate_embeds, extra=None):
        seen["states"], seen["mask"] = history_states, history_mask
        return original_forward(history_states, history_mask, candidate_embeds, extra)

    head.forward = spy
    both = CountForwards(lm)
    out = retrieve_and_rank(lm, vocab, sids, head, ids, mask, beam=beam, exclude_items=hist)
    both.handle.remove()

    T = ids.shape[1]
    assert T > 8  # longer than any decode step (num_beams tokens)
    assert both.lengths == alone.lengths
    assert both.history_forwards(T) == alone.history_forwards(T) == 1  # the single prefill
    # the head read exactly retrieval's own states, which equal a fresh encoding
    assert seen["states"] is out.retrieval.history_states
    assert torch.equal(seen["mask"], mask)
    assert torch.equal(out.retrieval.items, beams.items)
    with torch.no_grad():
        fresh = encode_history(lm, ids, mask)
    real = mask.bool()
    assert torch.allclose(seen["states"][real], fresh[real], atol=1e-5)
    # the ranked items are the retrieved ones, reordered
    for b in range(2):
        assert sorted(out.items[b].tolist()) == sorted(beams.items[b].tolist())


class _ReadoutHead(nn.Module):
    """Head stand-in whose logits are the first O+1 dims of a candidate's level-0 embedding."""

    def __init__(self):
        super().__init__()
        self.config = RankingHeadConfig(hidden_size=32, num_levels=len(SIZES), outcomes=OUTCOMES)

    def forward(self, history_states, history_mask, candidate_embeds, extra=None):
        return candidate_embeds[:, :, 0, : len(OUTCOMES) + 1]


def test_outcome_weights_reorder_candidates_where_like_and_watch_disagree():
    lm, vocab, sids = make_setup()
    codes = sids.codes
    # item a: likely liked; item b: likely watched but not liked; item c: likely nothing
    a = 0
    b = next(i for i in range(30) if codes[i, 0] != codes[a, 0])
    c = next(i for i in range(30) if codes[i, 0] not in (codes[a, 0], codes[b, 0]))
    with torch.no_grad():
        w = lm.get_input_embeddings().weight
        w[vocab.level_start[0] + codes[a, 0], :3] = torch.tensor([2.0, -1.0, 0.0])
        w[vocab.level_start[0] + codes[b, 0], :3] = torch.tensor([0.5, 3.0, 0.0])
        w[vocab.level_start[0] + codes[c, 0], :3] = torch.tensor([-3.0, -3.0, 3.0])
    ids, mask, _ = make_histories(vocab, sids, [3])
    states = torch.zeros(1, ids.shape[1], 32)
    items = torch.tensor([[c, b, a]])
    head = _ReadoutHead()

    def order(weights):
        out = rank_candidates(
            head, lm, vocab, sids, states, mask, items, outcome_weights=weights, beam_weight=0.0
        )
        return out.items[0].tolist(), out

    like_first, out = order({"like": 1.0, "watch": 0.3})
    assert like_first == [a, b, c]
    # probs are the softmax of the logits, columns (like, watch, none)
    p_a = torch.tensor([2.0, -1.0, 0.0]).softmax(-1)
    assert torch.allclose(out.probs[0, 0], p_a, atol=1e-6)
    assert out.outcome_labels == ["like", "watch", "none"]
    assert out.rank_scores[0, 0] == pytest.approx(float(p_a[0] + 0.3 * p_a[1]), abs=1e-6)
    assert order({"like": 0.0, "watch": 1.0})[0] == [b, a, c]
    assert order({"watch": 1.0})[0] == [b, a, c]  # an outcome left out weighs 0
    with pytest.raises(ValueError, match="click"):
        order({"click": 1.0})


def test_save_then_load_gives_identical_scores(tmp_path):
    lm, vocab, sids = make_setup()
    head = make_head(seed=3)
    ids, mask, hist = make_histories(vocab, sids, [4, 2])
    beam = BeamSearchConfig(num_beams=6, outcome="like")
    before = retrieve_and_rank(lm, vocab, sids, head, ids, mask, beam=beam)
    head.save_pretrained(tmp_path / "ranker")
    head.save_pretrained(tmp_path / "ranker")  # overwriting an existing artifact works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranker"]
    loaded = RankingHead.from_pretrained(tmp_path / "ranker")
    assert loaded.config == head.config
    after = retrieve_and_rank(lm, vocab, sids, loaded, ids, mask, beam=beam)
    assert torch.equal(after.items, before.items)
    assert torch.equal(after.final_scores, before.final_scores)
    with pytest.raises(FileNotFoundError, match="config.json"):
        RankingHead.from_pretrained(tmp_path / "missing")


def test_training_lowers_the_loss_and_ranks_items_of_the_users_taste_first():
    lm, vocab, sids = make_setup()
    codes = sids.codes
    # each user only takes items of one level-0 group (their "taste"); an item is liked when
    # its last code is even, watched when odd
    group = codes[:, 0].numpy()
    rng = np.random.default_rng(0)
    users = rng.integers(0, SIZES[0], size=48)
    items = np.concatenate([rng.choice(np.flatnonzero(group == g), size=6) for g in users])
    examples = RankingExamples(
        offsets=np.arange(0, 49 * 6, 6, dtype=np.int64),
        items=items,
        outcomes=codes[items, -1].numpy() % 2,
    )
    head = make_head(seed=0, dropout=0.0)
    stats = train_ranker(
        head, lm, vocab, sids, examples, steps=250, batch_size=16, lr=5e-3,
        n_random_negatives=6, n_beam_negatives=1, seed=0, progress=False,
    )  # fmt: skip
    assert len(stats["losses"]) == 250 and stats["examples"] == 48 * 5
    assert stats["final_loss"] < 0.6 * stats["first_loss"]
    # fresh users: a history of 4 items of group g; one candidate of group g, three of others
    test_groups = torch.arange(24) % SIZES[0]
    pick = lambda g, k: torch.from_numpy(rng.choice(np.flatnonzero(group == g), size=k))  # noqa: E731
    hist = torch.stack([pick(int(g), 4) for g in test_groups])
    true = torch.stack([pick(int(g), 1)[0] for g in test_groups])
    others = torch.stack(
        [torch.from_numpy(rng.choice(np.flatnonzero(group != int(g)), size=3)) for g in test_groups]
    )
    ids, mask = history_inputs(vocab, codes, hist, codes[hist, -1] % 2)
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
    cands = torch.cat([others, true[:, None]], 1)
    out = rank_candidates(head, lm, vocab, sids, states, mask, cands, beam_weight=0.0)
    assert (out.items[:, 0] == true).float().mean() >= 0.75  # chance: 0.25
    # the predicted outcome of the true item follows the parity of its last code
    p_true = out.probs[torch.arange(24), (out.items == true[:, None]).int().argmax(1)]
    like_wins = p_true[:, 0] > p_true[:, 1]
    assert (like_wins == (codes[true, -1] % 2 == 0)).float().mean() >= 0.8


def test_beam_negatives_come_from_the_beam_search_and_reuse_its_history_states():
    lm, vocab, sids = make_setup()
    examples = RankingExamples(
        offsets=np.array([0, 5, 9]), items=np.arange(9) * 3 % 30, outcomes=np.arange(9) % 2
    )
    calls = []

    def beam_fn(input_ids, attention_mask, exclude_items):
        out = constrained_beam_search(
            lm, vocab, sids.trie, input_ids, attention_mask, num_beams=4, outcome="like",
            exclude_items=exclude_items,
        )  # fmt: skip
        calls.append((out.items, exclude_items))
        return out

    counter = CountForwards(lm)
    head = make_head()
    train_ranker(
        head, lm, vocab, sids, examples, steps=3, batch_size=4, lr=1e-3,
        n_random_negatives=2, n_beam_negatives=4, beam_fn=beam_fn, progress=False,
    )  # fmt: skip
    counter.handle.remove()
    assert len(calls) == 3
    # one history forward per step: the beam search's prefill, no second encoding
    # (histories hold >= 1 item = 4 tokens, + the outcome; decode steps feed <= 4 beams)
    assert counter.history_forwards(5) == 3
    for items, excluded in calls:
        for b in range(items.shape[0]):  # the history is never proposed as a negative
            hist = set(excluded[b][excluded[b] >= 0].tolist())
            assert not hist & set(items[b][items[b] >= 0].tolist())


def test_bad_inputs_raise_value_errors_that_name_the_value():
    with pytest.raises(ValueError, match="head_size=30"):
        RankingHeadConfig(hidden_size=32, num_levels=3, head_size=30, n_heads=4)
    with pytest.raises(ValueError, match="'none'"):
        RankingHeadConfig(hidden_size=32, num_levels=3, outcomes=["like", "none"])
    lm, vocab, sids = make_setup()
    head = make_head()
    ids, mask, _ = make_histories(vocab, sids, [3])
    states = torch.zeros(1, ids.shape[1], 32)
    alone = dict(beam_weight=0.0)  # no beam scores to blend in
    with pytest.raises(ValueError, match="top_k=5"):
        rank_candidates(head, lm, vocab, sids, states, mask, torch.tensor([[1, 2]]), top_k=5,
                        **alone)  # fmt: skip
    with pytest.raises(ValueError, match="pass beam_scores, or beam_weight=0"):
        rank_candidates(head, lm, vocab, sids, states, mask, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="catalogue size 30"):
        rank_candidates(head, lm, vocab, sids, states, mask, torch.tensor([[1, 30]]), **alone)


# ------------------------------------------------------- head fed the beam log-prob
def test_beam_score_features_renormalise_over_the_list_and_zero_missing_candidates():
    from sid.ranking import beam_score_features

    scores = torch.tensor([[-1.0, -2.0, float("-inf")], [-30.0, -31.0, -32.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    f = beam_score_features(scores, valid)
    assert f.shape == (2, 3, 1) and f[0, 2, 0] == 0.0
    # log of the renormalised probability: exp sums to 1 over each list's valid candidates
    assert torch.allclose(f[0, :2, 0].exp().sum(), torch.tensor(1.0))
    # shift invariant: a longer history (lower raw log-probs) gives the same features
    assert torch.allclose(f[1, :, 0], beam_score_features(scores[1:] + 29.0, valid[1:])[0, :, 0])
    # a row without candidates gives zeros, not NaN
    assert torch.equal(
        beam_score_features(scores[:1], torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 3, 1)
    )


def _two_ranked_lists():
    """A tiny LM's states of two histories, 4 candidates each with well-separated beam
    scores: (lm, vocab, sids, states, mask, items, beam_scores)."""
    lm, vocab, sids = make_setup()
    ids, mask, _ = make_histories(vocab, sids, [3, 5])
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
    items = torch.tensor([[4, 7, 1, 9], [2, 8, 5, 3]])
    beam = torch.tensor([[-20.0, -1.0, -10.0, -5.0], [-2.0, -30.0, -12.0, -6.0]])
    return lm, vocab, sids, states, mask, items, beam


def test_head_fed_beam_scores_starts_in_beam_order_and_checks_its_inputs():
    lm, vocab, sids, states, mask, items, beam = _two_ranked_lists()
    head = make_head(score_features=1, dropout=0.0)
    out = rank_candidates(head, lm, vocab, sids, states, mask, items, beam_scores=beam)
    # the skip path starts as "interaction logit = beam log-prob": untrained, the head keeps
    # well-separated beam scores in the beam's order
    assert out.items.tolist() == [[7, 9, 1, 4], [2, 3, 5, 8]]
    with pytest.raises(ValueError, match="beam_scores"):
        rank_candidates(head, lm, vocab, sids, states, mask, items)
    emb = candidate_embeddings(lm, vocab, sids.codes[items])
    with pytest.raises(ValueError, match="retrieval score"):
        head(states, mask, emb)
    with pytest.raises(ValueError, match="takes no scores"):
        make_head()(states, mask, emb, scores=torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="score_features"):
        make_head(score_features=-1)


def test_head_fed_beam_scores_survives_save_and_load(tmp_path):
    lm, vocab, sids = make_setup()
    head = make_head(score_features=1)
    head.score_proj.weight.data.normal_()
    ids, mask, _ = make_histories(vocab, sids, [4])
    with torch.no_grad():
        states = encode_history(lm, ids, mask)
    items, beam = torch.tensor([[3, 6, 9]]), torch.tensor([[-1.0, -2.0, -3.0]])
    before = rank_candidates(head, lm, vocab, sids, states, mask, items, beam_scores=beam)
    head.save_pretrained(tmp_path / "ranker")
    again = RankingHead.from_pretrained(tmp_path / "ranker")
    assert again.config.score_features == 1
    after = rank_candidates(again, lm, vocab, sids, states, mask, items, beam_scores=beam)
    assert torch.equal(before.final_scores, after.final_scores)


def _taste_examples(codes, n_users=64, length=6, seed=0):
    """Each user takes `length` distinct items of one level-0 group (their taste)."""
    group = codes[:, 0].numpy()
    rng = np.random.default_rng(seed)
    big = [g for g in range(SIZES[0]) if (group == g).sum() >= length + 2]
    users = rng.choice(big, size=n_users)
    items = np.concatenate(
        [rng.choice(np.flatnonzero(group == g), size=length, replace=False) for g in users]
    )
    return RankingExamples(
        offsets=np.arange(0, (n_users + 1) * length, length, dtype=np.int64),
        items=items,
        outcomes=codes[items, -1].numpy() % 2,
    ), big


def test_list_training_learns_from_the_beams_own_lists_and_beats_the_beam_order():
    lm, vocab, sids = make_setup(n_items=40)
    codes = sids.codes
    examples, groups = _taste_examples(codes)
    calls = []

    def beam_fn(input_ids, attention_mask, exclude_items):
        calls.append(exclude_items)
        return constrained_beam_search(
            lm, vocab, sids.trie, input_ids, attention_mask, num_beams=12, outcome="like",
            exclude_items=exclude_items, return_states=True,
        )  # fmt: skip

    head = make_head(seed=0, dropout=0.0, score_features=1)
    stats = train_ranker(
        head, lm, vocab, sids, examples, steps=150, batch_size=16, lr=5e-3,
        n_random_negatives=0, n_beam_negatives=12, beam_fn=beam_fn, seed=0, progress=False,
    )  # fmt: skip
    # lists served with the history kept: the beam excludes nothing
    assert calls and all(c is None for c in calls)
    assert 0 < stats["list_hit_rate"] <= 1 and stats["steps"] == len(stats["losses"]) <= 150
    assert stats["final_loss"] < 0.8 * stats["first_loss"]
    # fresh users: 4 seen items of their group; the target is an unseen item of that group
    rng = np.random.default_rng(1)
    group = codes[:, 0].numpy()
    beam_rr, head_rr = [], []
    for g in np.resize(groups, 60):
        pool = rng.choice(np.flatnonzero(group == g), size=5, replace=False)
        hist, target = torch.from_numpy(pool[:4])[None], int(pool[4])
        ids, mask = history_inputs(vocab, codes, hist, codes[hist, -1] % 2)
        out = retrieve_and_rank(
            lm, vocab, sids, head, ids, mask, beam=BeamSearchConfig(num_beams=12, outcome="like")
        )
        beam_items = out.retrieval.items[0].tolist()
        if target not in beam_items:
            continue
        beam_rr.append(1 / (1 + beam_items.index(target)))
        head_rr.append(1 / (1 + out.items[0].tolist().index(target)))
    assert len(beam_rr) >= 10
    assert np.mean(head_rr) > np.mean(beam_rr) + 0.15, (np.mean(head_rr), np.mean(beam_rr))


def test_list_training_refuses_random_negatives_and_short_lists():
    lm, vocab, sids = make_setup()
    examples, _ = _taste_examples(sids.codes, n_users=4, length=3)
    head = make_head(score_features=1)
    with pytest.raises(ValueError, match="n_random_negatives=0"):
        train_ranker(head, lm, vocab, sids, examples, steps=1, n_random_negatives=4,
                     n_beam_negatives=8, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="n_beam_negatives >= 2"):
        train_ranker(head, lm, vocab, sids, examples, steps=1, n_random_negatives=0,
                     n_beam_negatives=1, progress=False)  # fmt: skip


def test_list_training_without_any_hit_warns_and_keeps_the_beam_order():
    lm, vocab, sids = make_setup()
    examples, _ = _taste_examples(sids.codes, n_users=4, length=3)

    def beam_fn(input_ids, attention_mask, exclude_items):  # lists that never hold a positive
        out = constrained_beam_search(
            lm, vocab, sids.trie, input_ids, attention_mask, num_beams=4, outcome="like",
            return_states=True,
        )  # fmt: skip
        out.items = torch.full_like(out.items, -1)
        return out

    head = make_head(score_features=1)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.warns(UserWarning, match="ranking head not trained"):
        stats = train_ranker(
            head, lm, vocab, sids, examples, steps=2, batch_size=2, n_random_negatives=0,
            n_beam_negatives=4, beam_fn=beam_fn, progress=False,
        )  # fmt: skip
    assert stats["steps"] == 0 and stats["list_hit_rate"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_each_default_lives_in_one_place():
    import inspect

    from sid.evaluation import evaluate_run

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    # the values train.py and eval.py use, read from the library signatures
    assert default(train_ranker, "n_beam_negatives") == 16
    assert default(train_ranker, "n_random_negatives") == 4
    assert DEFAULT_BEAM_WEIGHT == 0.5
    for fn in (rank_candidates, retrieve_and_rank, evaluate_run):
        assert default(fn, "beam_weight") == DEFAULT_BEAM_WEIGHT, fn.__name__


# ----------------------------------------------------------------------------- dense feature
class _Prior(nn.Module):
    """A stand-in dense head whose item scores are a high-frequency function of the query
    state: each user gets other favourites, which the ranking head cannot learn from the
    history states and the candidate's embedding in a few steps."""

    def __init__(self, n_items, hidden, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_items, hidden, generator=g))

    def scores(self, h):
        return 5.0 * torch.sin(40.0 * h.float() @ self.weight.T)


def test_score_features_with_dense_scores_renormalise_each_column():
    from sid.ranking import beam_score_features

    beam = torch.tensor([[-1.0, -2.0, float("-inf")]])
    dense = torch.tensor([[-9.0, -7.0, float("-inf")]])
    valid = torch.tensor([[True, True, False]])
    f = beam_score_features(beam, valid, dense)
    assert f.shape == (1, 3, 2) and torch.equal(f[..., :1], beam_score_features(beam, valid))
    assert torch.allclose(f[0, :2, 1].exp().sum(), torch.tensor(1.0)) and f[0, 2, 1] == 0
    assert f[0, 1, 1] > f[0, 0, 1]  # the dense order, not the beam's
    with pytest.raises(ValueError, match="must match"):
        beam_score_features(beam, valid, dense[:, :2])


def test_head_reading_dense_scores_starts_in_the_order_of_both_scores_and_needs_them():
    lm, vocab, sids, states, mask, items, beam = _two_ranked_lists()
    head = make_head(score_features=2, dropout=0.0)
    # untrained, the head ranks by the sum of the two renormalised log-probs
    dense = torch.tensor([[-1.0, -40.0, -2.0, -30.0], [-50.0, -1.0, -3.0, -40.0]])
    out = rank_candidates(
        head,
        lm,
        vocab,
        sids,
        states,
        mask,
        items,
        beam_scores=beam,
        prior_scores=dense,
        beam_weight=0.0,
    )
    from sid.ranking import beam_score_features

    total = beam_score_features(beam, torch.ones_like(beam, dtype=torch.bool), dense).sum(-1)
    expected = items.gather(1, total.argsort(-1, descending=True))
    assert out.items.tolist() == expected.tolist() == [[1, 4, 7, 9], [5, 8, 2, 3]]
    # where the two agree, the order is theirs
    out = rank_candidates(
        head,
        lm,
        vocab,
        sids,
        states,
        mask,
        items,
        beam_scores=beam,
        prior_scores=beam,
        beam_weight=0.0,
    )
    assert out.items.tolist() == [[7, 9, 1, 4], [2, 3, 5, 8]]
    with pytest.raises(ValueError, match="prior_scores"):
        rank_candidates(head, lm, vocab, sids, states, mask, items, beam_scores=beam)
    with pytest.raises(ValueError, match="score_features"):
        make_head(score_features=3)


def _dense_target_examples(lm, vocab, sids, prior, n_users, seed, pick="argmax"):
    """Random 4-item histories; each target is the dense prior's favourite among the items
    of the user's own 12-beam list — known to the dense score, not to the beam order or to
    the item's identity (``pick="argmin"``: its least favourite instead)."""
    g = torch.Generator().manual_seed(seed)
    n_items = sids.codes.shape[0]
    hist = torch.stack([torch.randperm(n_items, generator=g)[:4] for _ in range(n_users)])
    outs = torch.zeros_like(hist)
    ids, mask = history_inputs(vocab, sids.codes, hist, outs)
    beams = BeamSearchConfig(num_beams=12, outcome="like", slots=1).search(
        lm, vocab, sids.trie, ids, mask, prior=prior
    )
    chosen = getattr(beams.prior_scores, pick)(-1, keepdim=True)
    targets = beams.items.gather(1, chosen)[:, 0]
    seqs = torch.cat([hist, targets[:, None]], 1).numpy()
    examples = RankingExamples(
        offsets=np.arange(0, 5 * n_users + 1, 5, dtype=np.int64),
        items=seqs.reshape(-1),
        outcomes=np.zeros(5 * n_users, dtype=np.int64),
        positions=np.arange(4, 5 * n_users, 5, dtype=np.int64),
    )
    return examples, ids, mask, targets


def _dense_target_mrr(features, **train_kw):
    """A head reading `features` retrieval scores trained on `_dense_target_examples`, then its
    mean reciprocal rank of fresh users' targets → (train stats, MRR, examples, prior)."""
    lm, vocab, sids = make_setup(n_items=40)
    prior = _Prior(40, 32, seed=3)
    examples, _, _, _ = _dense_target_examples(lm, vocab, sids, prior, 64, seed=0)
    _, ids, mask, targets = _dense_target_examples(lm, vocab, sids, prior, 40, seed=1)
    head = make_head(seed=0, dropout=0.0, score_features=features)
    stats = train_ranker(
        head, lm, vocab, sids, examples, steps=120, batch_size=16, lr=5e-3,
        n_random_negatives=0, n_beam_negatives=12, beam_outcome="like", seed=0,
        progress=False, prior=prior if features == 2 else None, **train_kw,
    )  # fmt: skip
    out = retrieve_and_rank(
        lm, vocab, sids, head, ids, mask, prior=prior, beam_weight=0.0,
        beam=BeamSearchConfig(num_beams=12, outcome="like", slots=1),
    )  # fmt: skip
    ranks = (out.items == targets[:, None]).float().argmax(-1)
    return stats, float((1.0 / (1 + ranks)).mean()), (lm, vocab, sids, examples, prior)


def test_head_reading_dense_scores_learns_what_the_dense_score_knows():
    mrr = {}
    for features in (1, 2):
        stats, mrr[features], setup = _dense_target_mrr(features)
        assert stats["list_hit_rate"] == 1.0  # every target is in its own list
    assert mrr[2] > 0.8 and mrr[2] > mrr[1] + 0.25, mrr
    lm, vocab, sids, examples, _ = setup
    with pytest.raises(ValueError, match="prior="):
        train_ranker(make_head(score_features=2), lm, vocab, sids, examples, steps=1,
                     n_random_negatives=0, n_beam_negatives=12, progress=False)  # fmt: skip


def test_validation_target_examples_take_the_whole_train_sequence_and_never_test():
    from types import SimpleNamespace

    split = SimpleNamespace(
        train_offsets=np.array([0, 3, 4, 6]),
        train_items=np.array([1, 2, 3, 4, 5, 6]),
        train_outcomes=np.array([0, 1, 0, 1, 0, 1]),
        valid_items=np.array([7, 8, 9]),
        valid_outcomes=np.array([1, 0, 1]),
        test_items=np.array([10, 11, 12]),
    )
    ex = RankingExamples.from_split(split, "valid", users=[0, 1, 2])
    assert ex.items.tolist() == [1, 2, 3, 7, 4, 8, 5, 6, 9]
    assert ex.outcomes.tolist() == [0, 1, 0, 1, 1, 0, 0, 1, 1]
    assert ex.targets().tolist() == [3, 5, 8]  # one per user: its validation target
    assert not set(split.test_items) & set(ex.items.tolist())
    left_out = RankingExamples.from_split(split, "valid", users=[2])
    assert left_out.items.tolist() == [5, 6, 9] and left_out.targets().tolist() == [2]
    train = RankingExamples.from_split(split)
    assert train.positions is None and train.targets().tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="target"):
        RankingExamples.from_split(split, "test")
    with pytest.raises(ValueError, match="users"):
        RankingExamples.from_split(split, "valid", users=[3])


def test_list_loss_is_the_softmax_over_the_list_of_the_served_score():
    from sid.ranking_training import _list_loss

    # two classes (like, none); the served score is P(like)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, 0.0], [9.0, 0.0]]])
    labels = torch.tensor([[1, 0, 1, -100]])  # positive: candidate 1; candidate 3 missing
    weights = torch.tensor([1.0, 0.0])
    p_like = logits.log_softmax(-1)[0, :3, 0]
    expected = -(p_like.log_softmax(-1)[1])
    assert torch.allclose(_list_loss(logits, labels, weights, 1), expected)
    # putting the positive first lowers it; the missing candidate counts for nothing
    better = logits.clone()
    better[0, 1, 0] = 8.0
    assert _list_loss(better, labels, weights, 1) < _list_loss(logits, labels, weights, 1)
    changed = logits.clone()
    changed[0, 3, 0] = -9.0
    assert torch.equal(
        _list_loss(changed, labels, weights, 1), _list_loss(logits, labels, weights, 1)
    )


def test_a_head_trained_with_the_listwise_loss_learns_the_dense_order():
    stats, mrr, (lm, vocab, sids, examples, prior) = _dense_target_mrr(2, list_loss_weight=1.0)
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    assert mrr > 0.8
    with pytest.raises(ValueError, match="list_loss_weight"):
        train_ranker(make_head(score_features=2), lm, vocab, sids, examples, steps=1, prior=prior,
                     n_random_negatives=0, n_beam_negatives=12, list_loss_weight=-1.0,
                     progress=False)  # fmt: skip


def test_an_untrained_head_reading_scores_ranks_by_their_sum_exactly():
    lm, vocab, sids, states, mask, items, beam = _two_ranked_lists()
    from sid.ranking import beam_score_features

    dense = torch.tensor([[-1.0, -40.0, -2.0, -30.0], [-50.0, -1.0, -3.0, -40.0]])
    features = beam_score_features(beam, torch.ones_like(beam, dtype=torch.bool), dense)
    head = make_head(score_features=2, dropout=0.0)
    embeds = candidate_embeddings(lm, vocab, sids.codes[items])
    logits = head(states, mask, embeds, scores=features)
    # every outcome logit is the sum of the features, "none" is 0: the learned part starts at 0
    assert torch.allclose(logits[..., :-1], features.sum(-1, keepdim=True).expand(-1, -1, 2))
    assert torch.equal(logits[..., -1], torch.zeros_like(logits[..., -1]))


def test_tuning_keeps_the_step_that_ranks_the_held_out_lists_best():
    lm, vocab, sids = make_setup(n_items=40)
    examples, _ = _taste_examples(sids.codes)
    tune, _ = _taste_examples(sids.codes, n_users=40, length=5, seed=1)  # other users
    head = make_head(seed=0, dropout=0.0, score_features=1)
    start = {k: v.clone() for k, v in head.state_dict().items()}
    stats = train_ranker(
        head, lm, vocab, sids, examples, steps=60, batch_size=16, lr=5e-3,
        n_random_negatives=0, n_beam_negatives=12, beam_outcome="like", seed=0,
        progress=False, tune=tune, eval_every=20,
    )  # fmt: skip
    curve = stats["tune_curve"]
    assert [step for step, _ in curve] == [0, 20, 40, 60] and stats["tune_examples"] == 40 * 4
    values = [v for _, v in curve]
    assert stats["best_step"] == curve[values.index(max(values))][0] > 0
    assert max(values) > values[0] + 0.05  # the held-out users share the trained-on tastes
    assert any(not torch.equal(v, head.state_dict()[k]) for k, v in start.items())


def test_tuning_that_no_step_improves_gives_the_untrained_head_back():
    # the trained-on targets are the dense score's *least* favourite of their list, the
    # held-out ones its favourite, which the untrained head (ranking by beam + dense) puts
    # first: every step ranks them worse, so step 0 is kept, bit for bit
    lm, vocab, sids = make_setup(n_items=40)
    prior = _Prior(40, 32, seed=3)
    examples, _, _, _ = _dense_target_examples(lm, vocab, sids, prior, 64, seed=0, pick="argmin")
    tune, _, _, _ = _dense_target_examples(lm, vocab, sids, prior, 48, seed=2)
    head = make_head(seed=0, dropout=0.0, score_features=2)
    start = {k: v.clone() for k, v in head.state_dict().items()}
    stats = train_ranker(
        head, lm, vocab, sids, examples, steps=60, batch_size=16, lr=5e-3,
        n_random_negatives=0, n_beam_negatives=12, beam_outcome="like", seed=0,
        progress=False, prior=prior, tune=tune, eval_every=20,
    )  # fmt: skip
    values = [v for _, v in stats["tune_curve"]]
    assert stats["best_step"] == 0 and values[0] > max(values[1:])
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in start.items())


def test_tuning_needs_lists_and_a_positive_interval():
    lm, vocab, sids = make_setup()
    examples, _ = _taste_examples(sids.codes)
    with pytest.raises(ValueError, match="n_beam_negatives >= 2"):
        train_ranker(make_head(), lm, vocab, sids, examples, steps=1, n_beam_negatives=0,
                     tune=examples, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="eval_every"):
        train_ranker(make_head(), lm, vocab, sids, examples, steps=1, tune=examples,
                     eval_every=0, progress=False)  # fmt: skip
