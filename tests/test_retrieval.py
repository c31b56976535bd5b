import pytest
import torch
from conftest import random_codes, tiny_llama, word_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sid.retrieval as retrieval
from sid.codes import PrefixTrie
from sid.retrieval import (
    BeamSearchConfig,
    constrained_beam_search,
    teacher_forced_level_correct,
)
from sid.vocab import SIDVocab

OUTCOMES = ["like", "watch"]


# ----------------------------------------------------------------------------- fixtures
def make_setup(sizes=(4, 3, 5), n_items=30, seed=0, tie=False):
    sizes = list(sizes)
    tok = word_tokenizer(["<pad>", "<unk>", "x"])
    vocab = SIDVocab(sizes, OUTCOMES)
    vocab.add_to_tokenizer(tok)
    lm = tiny_llama(len(tok), seed=seed, max_position_embeddings=256, tie_word_embeddings=tie)
    vocab.resize_model(lm)
    # sharpen the SID logits so the orderings are far from ties
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(3.0)
    codes = random_codes(n_items, sizes, seed)
    return lm, vocab, PrefixTrie.build(codes, sizes), codes


def make_histories(vocab, codes, lengths, seed=0):
    """Left-padded [B, T] histories of <outcome> SID items; lengths in items."""
    g = torch.Generator().manual_seed(seed)
    L = codes.shape[1]
    T = max(lengths) * (L + 1)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    items = []
    for b, n in enumerate(lengths):
        its = torch.randint(len(codes), (n,), generator=g)
        outs = torch.randint(len(vocab.outcomes), (n,), generator=g)
        seq = torch.cat(
            [
                torch.zeros(n, 1, dtype=torch.long),
                vocab.sid_token_ids(codes[its]),
            ],
            1,
        )
        for i, o in enumerate(outs.tolist()):
            seq[i, 0] = vocab.outcome_ids[vocab.outcomes[o]]
        seq = seq.flatten()
        ids[b, T - len(seq) :] = seq
        mask[b, T - len(seq) :] = 1
        items.append(its)
    return ids, mask, items


def brute_force_scores(lm, vocab, trie, codes, ids, mask, outcome):
    """[B, N] summed log-softmax over valid children, teacher forcing every item."""
    B, N, L = ids.shape[0], codes.shape[0], codes.shape[1]
    out = torch.empty(B, N)
    sid = vocab.sid_token_ids(codes)
    for b in range(B):
        hist = ids[b][mask[b].bool()]
        seq = torch.cat([hist.expand(N, -1), torch.full((N, 1), vocab.outcome_id(outcome)), sid], 1)
        with torch.no_grad():
            logits = lm(input_ids=seq).logits[:, -L - 1 : -1]  # [N, L, V]
        total = torch.zeros(N)
        node = torch.zeros(N, dtype=torch.long)
        for level in range(L):
            s = vocab.level_start[level]
            lv = logits[:, level, s : s + vocab.codebook_sizes[level]]
            ok = trie.allowed(level, node)
            lp = torch.log_softmax(lv.masked_fill(~ok, float("-inf")), -1)
            total += lp.gather(1, codes[:, level : level + 1]).squeeze(1)
            node = trie.step(level, node, codes[:, level]).clamp_min(0)
        out[b] = total
    return out


def item_of_codes(trie, codes):
    node = torch.zeros(codes.shape[:-1], dtype=torch.long)
    for level in range(codes.shape[-1]):
        node = trie.step(level, node, codes[..., level])
    return node


@pytest.fixture(params=["shared-sdpa", "shared-eager", "expanded"])
def strategy(request, monkeypatch):
    """KV layout of the decode: one history copy per user (SDPA or eager), or per beam."""
    if request.param == "expanded":
        monkeypatch.setattr(retrieval, "_shared_history_ok", lambda lm: False)
    return request.param


def apply_strategy(lm, strategy):
    if strategy == "shared-eager":
        lm.set_attn_implementation("eager")
    return lm


# ----------------------------------------------------------------------------- tests
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(2, 6), min_size=1, max_size=4),
    n_frac=st.floats(0.05, 1.0),
    beams=st.integers(1, 12),
    seed=st.integers(0, 1000),
    lengths=st.lists(st.integers(0, 4), min_size=1, max_size=3),
)
def test_results_are_valid_unique_sids(sizes, n_frac, beams, seed, lengths):
    total = 1
    for k in sizes:
        total *= k
    n_items = max(1, int(total * n_frac))
    lm, vocab, trie, codes = make_setup(sizes, n_items, seed)
    ids, mask, _ = make_histories(vocab, codes, lengths, seed)
    out = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=beams, outcome="like")
    assert out.items.shape == (len(lengths), beams)
    assert out.codes.shape == (len(lengths), beams, len(sizes))
    found = out.items >= 0
    # the number found is min(beams, catalogue): beam search never runs dry early
    assert torch.equal(found.sum(1), torch.full((len(lengths),), min(beams, n_items)))
    assert torch.equal(codes[out.items[found]], out.codes[found])
    assert torch.equal(item_of_codes(trie, out.codes[found]), out.items[found])
    assert torch.isfinite(out.scores[found]).all() and (out.scores[found] <= 0).all()
    assert torch.isneginf(out.scores[~found]).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    for row in out.items:
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == len(kept)


@pytest.mark.parametrize("tie", [False, True])
def test_wide_beam_equals_brute_force_top_k(tie, strategy):
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=1, tie=tie)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [3, 1, 2], seed=1)
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=10, outcome="watch"
    )
    brute = brute_force_scores(lm, vocab, trie, codes, ids, mask, "watch")
    top, idx = brute.topk(10, dim=1)
    assert torch.equal(out.items, idx)
    assert torch.allclose(out.scores, top, atol=1e-4)
    assert (out.outcomes == OUTCOMES.index("watch")).all()


def test_scores_are_summed_level_log_probs_of_returned_items():
    lm, vocab, trie, codes = make_setup((5, 5), 20, seed=2)
    ids, mask, _ = make_histories(vocab, codes, [2, 3], seed=2)
    out = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=4, outcome="like")
    brute = brute_force_scores(lm, vocab, trie, codes, ids, mask, "like")
    assert torch.allclose(out.scores, brute.gather(1, out.items), atol=1e-4)


def test_left_padding_matches_running_each_user_alone(strategy):
    lm, vocab, trie, codes = make_setup((4, 4, 3), 40, seed=3)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [5, 1, 3, 0], seed=3)
    batch = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=8, outcome={"like": 5, "watch": 3}
    )
    for b in range(len(ids)):
        keep = mask[b].bool()
        alone = constrained_beam_search(
            lm,
            vocab,
            trie,
            ids[b : b + 1, keep],
            mask[b : b + 1, keep],
            num_beams=8,
            outcome={"like": 5, "watch": 3},
        )
        assert torch.equal(alone.items[0], batch.items[b])
        assert torch.allclose(alone.scores[0], batch.scores[b], atol=1e-5)
        assert torch.allclose(alone.history_states[0], batch.history_states[b, keep], atol=1e-5)


def test_generation_config_does_not_change_results():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=4)
    ids, mask, _ = make_histories(vocab, codes, [3, 2], seed=4)
    before = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=6, outcome="like")
    lm.generation_config.do_sample = True
    lm.generation_config.top_k = 2
    lm.generation_config.num_beams = 3
    lm.generation_config.temperature = 5.0
    lm.generation_config.length_penalty = 3.0
    after = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=6, outcome="like")
    assert torch.equal(before.items, after.items)
    assert torch.equal(before.scores, after.scores)


def test_budget_returns_asked_counts_per_outcome_without_duplicates(strategy):
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=5)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [3, 2, 4], seed=5)
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=10, outcome={"like": 6, "watch": 4}
    )
    assert out.items.shape == (3, 10)
    assert ((out.outcomes == 0).sum(1) == 6).all()
    assert ((out.outcomes == 1).sum(1) == 4).all()
    assert (out.items >= 0).all()
    for row in out.items:
        assert len(set(row.tolist())) == 10
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    # each outcome's picks are its own best beams among what is left
    brute_like = brute_force_scores(lm, vocab, trie, codes, ids, mask, "like")
    for b in range(3):
        like_items = set(out.items[b][out.outcomes[b] == 0].tolist())
        assert like_items == set(brute_like[b].topk(6).indices.tolist())


def test_budget_refills_when_outcomes_propose_the_same_items():
    # catalogue of 6: both outcomes rank the same small set, so "watch" must take the rest
    lm, vocab, trie, codes = make_setup((3, 2), 6, seed=6)
    ids, mask, _ = make_histories(vocab, codes, [2, 1], seed=6)
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=4, outcome={"like": 4, "watch": 2}
    )
    for b in range(2):
        assert sorted(out.items[b].tolist()) == list(range(6))
        assert (out.outcomes[b] == 0).sum() == 4 and (out.outcomes[b] == 1).sum() == 2


def test_budget_larger_than_catalogue_pads_with_minus_one():
    lm, vocab, trie, codes = make_setup((2, 2), 3, seed=7)
    ids, mask, _ = make_histories(vocab, codes, [2], seed=7)
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=2, outcome={"like": 2, "watch": 2}
    )
    assert sorted(out.items[0].tolist()) == [-1, 0, 1, 2]
    assert (out.outcomes[0] == 0).sum() == 2 and (out.outcomes[0] == 1).sum() == 1
    assert torch.isneginf(out.scores[0, -1])


def test_exclude_items_removes_them_and_keeps_other_scores():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=8)
    ids, mask, _ = make_histories(vocab, codes, [3, 2], seed=8)
    full = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=8, outcome="like"
    )
    exclude = torch.stack([full.items[0, [0, 2, 5]], torch.tensor([full.items[1, 1], -1, -1])])
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=5, outcome="like", exclude_items=exclude
    )
    for b in range(2):
        ex = set(exclude[b].tolist()) - {-1}
        expected = [i for i in full.items[b].tolist() if i not in ex][:5]
        assert out.items[b].tolist() == expected
        sel = torch.tensor([full.items[b].tolist().index(i) for i in expected])
        assert torch.allclose(out.scores[b], full.scores[b, sel])


def test_more_beams_than_catalogue_keeps_dead_beams_out(strategy):
    lm, vocab, trie, codes = make_setup((3, 3), 4, seed=9)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [1], seed=9)
    out = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=9, outcome="like")
    assert sorted(out.items[0, :4].tolist()) == [0, 1, 2, 3]
    assert (out.items[0, 4:] == -1).all() and (out.codes[0, 4:] == -1).all()
    assert torch.isneginf(out.scores[0, 4:]).all()


def test_no_outcome_decodes_after_history_tokens():
    lm, vocab, trie, codes = make_setup((4, 3), 12, seed=10)
    ids, mask, _ = make_histories(vocab, codes, [2, 1], seed=10)
    with_tok = torch.cat([ids, torch.full((2, 1), vocab.outcome_id("like"))], 1)
    mask1 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    a = constrained_beam_search(lm, vocab, trie, with_tok, mask1, num_beams=5)
    b = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=5, outcome="like")
    assert torch.equal(a.items, b.items)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert (a.outcomes == -1).all() and (b.outcomes == 0).all()


def test_bad_arguments_raise_value_errors():
    lm, vocab, trie, codes = make_setup((4, 3), 12, seed=11)
    ids, mask, _ = make_histories(vocab, codes, [2], seed=11)
    with pytest.raises(ValueError, match="top_k"):
        constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=3, top_k=4, outcome="like")
    with pytest.raises(ValueError, match="'click'"):
        constrained_beam_search(lm, vocab, trie, ids, mask, outcome="click")
    right_padded = torch.cat([mask[:, 1:], torch.zeros(1, 1, dtype=torch.long)], 1)
    with pytest.raises(ValueError, match="LEFT-padded"):
        constrained_beam_search(lm, vocab, trie, ids, right_padded)
    with pytest.raises(ValueError, match="codebook sizes"):
        constrained_beam_search(
            lm, SIDVocab.from_dict({**vocab.to_dict(), "codebook_sizes": [4, 4]}), trie, ids, mask
        )


def test_beam_search_config_holds_the_defaults_and_refuses_bad_options():
    import dataclasses
    import inspect

    params = inspect.signature(constrained_beam_search).parameters
    for f in dataclasses.fields(BeamSearchConfig):
        assert params[f.name].default == f.default, f.name  # one source for each default
    cfg = BeamSearchConfig()
    assert (cfg.num_beams, cfg.top_k, cfg.outcome, cfg.return_states) == (20, None, None, True)
    assert cfg.num_candidates == 20
    assert BeamSearchConfig(num_beams=8, outcome={"like": 3, "watch": 2}).num_candidates == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_beams = 3
    budget = {"like": 2}
    held = BeamSearchConfig(outcome=budget)
    budget["like"] = 9  # the config keeps its own copy
    assert held.outcome == {"like": 2}
    for bad, message in [
        (dict(num_beams=0), "num_beams must be an int >= 1"),
        (dict(num_beams=4, top_k=5), r"top_k=5 must be in \[1, num_beams=4\]"),
        (dict(outcome={}), "budget dict is empty"),
        (dict(outcome={"like": -1}), "counts must be >= 0"),
        (dict(outcome={"like": 2}, top_k=3), "disagrees with the outcome budget"),
        (dict(outcome=3), "outcome must be None, a label"),
    ]:
        with pytest.raises(ValueError, match=message):
            BeamSearchConfig(**bad)


def test_config_search_equals_the_keyword_call():
    lm, vocab, trie, codes = make_setup((4, 3), 12, seed=5)
    ids, mask, items = make_histories(vocab, codes, [3, 1], seed=5)
    exclude = torch.stack([items[0], torch.cat([items[1], torch.full((2,), -1)])])
    cfg = BeamSearchConfig(num_beams=6, top_k=4, outcome="watch", return_states=False)
    a = cfg.search(lm, vocab, trie, ids, mask, exclude)
    b = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=6, top_k=4, outcome="watch",
        exclude_items=exclude, return_states=False,
    )  # fmt: skip
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)
    assert a.history_states is None and a.items.shape == (2, 4)
    with pytest.raises(ValueError, match="'click'"):
        BeamSearchConfig(outcome="click").search(lm, vocab, trie, ids, mask)


def test_prefix_codes_reach_an_embedding_that_accepts_them(strategy):
    lm, vocab, trie, codes = make_setup((4, 3, 2), 20, seed=12)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [2, 2], seed=12)
    seen = []

    class Recording(torch.nn.Module):
        accepts_prefix_codes = True

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, prefix_codes=None):
            seen.append(
                (input_ids.shape[1], None if prefix_codes is None else prefix_codes.clone())
            )
            return self.inner(input_ids)

    plain = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=3, outcome="like")
    lm.set_input_embeddings(Recording(lm.get_input_embeddings()))
    out = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=3, outcome="like")
    assert torch.equal(out.items, plain.items)
    # prefill reads prefixes from the sequence; the level-0 and level-1 tokens get the codes
    # decoded so far for their beam (the last level's token is never fed)
    assert seen[0][1] is None
    assert [p.shape for _, p in seen[1:]] == [(6, 0), (6, 1)]
    level0 = seen[2][1].view(2, 3)
    for b in range(2):
        assert set(out.codes[b, :, 0].tolist()) <= set(level0[b].tolist())


def test_teacher_forced_level_correct_matches_full_logits():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=13)
    ids, mask, _ = make_histories(vocab, codes, [3, 1, 2, 2], seed=13)
    gold_items = torch.tensor([0, 5, 7, 29])
    gold = codes[gold_items]
    got = teacher_forced_level_correct(lm, vocab, trie, ids, mask, gold, outcome="like")
    assert got.shape == (4, 3) and got.dtype == torch.bool
    for b in range(4):
        hist = ids[b][mask[b].bool()]
        seq = torch.cat(
            [hist, torch.tensor([vocab.outcome_id("like")]), vocab.sid_token_ids(gold[b])]
        )
        with torch.no_grad():
            logits = lm(input_ids=seq[None]).logits[0, -4:-1]
        node = torch.zeros((), dtype=torch.long)
        for level in range(3):
            s = vocab.level_start[level]
            lv = logits[level, s : s + vocab.codebook_sizes[level]]
            lv = lv.masked_fill(~trie.allowed(level, node), float("-inf"))
            assert bool(got[b, level]) == (int(lv.argmax()) == int(gold[b, level]))
            node = trie.step(level, node, gold[b, level])
    present = {tuple(c) for c in codes.tolist()}
    missing = next(
        (a, b, c) for a in range(4) for b in range(3) for c in range(5) if (a, b, c) not in present
    )
    bad = gold.clone()
    bad[1] = torch.tensor(missing)
    with pytest.raises(ValueError, match="row 1 .* not a valid SID"):
        teacher_forced_level_correct(lm, vocab, trie, ids, mask, bad, outcome="like")


def test_teacher_forced_level_correct_is_all_true_for_the_top_beam():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=14)
    ids, mask, _ = make_histories(vocab, codes, [2, 3], seed=14)
    out = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=30, outcome="watch")
    # the exact top item is not necessarily greedy per level, so compare with greedy decoding
    greedy = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=1, outcome="watch")
    got = teacher_forced_level_correct(
        lm, vocab, trie, ids, mask, greedy.codes[:, 0], outcome="watch"
    )
    assert got.all()
    assert out.scores[:, 0].ge(greedy.scores[:, 0] - 1e-5).all()


def test_prefixmem_attached_wide_beam_equals_brute_force(strategy):
    from prefixmem import PrefixMem, PrefixMemConfig

    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=15)
    apply_strategy(lm, strategy)
    cfg = PrefixMemConfig(codebook_sizes=[4, 3, 5], hidden_size=32, head_dim=8, gate_init=1.0)
    torch.manual_seed(15)
    pm = PrefixMem(cfg)
    with torch.no_grad():  # make the memory matter
        for p in pm.memory.parameters():
            p.normal_(0, 1.0)
    ids, mask, _ = make_histories(vocab, codes, [3, 1], seed=15)
    plain = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=10, outcome="like"
    )
    pm.attach(lm, vocab)
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=10, outcome="like"
    )
    brute = brute_force_scores(lm, vocab, trie, codes, ids, mask, "like")
    top, idx = brute.topk(10, dim=1)
    assert not torch.allclose(out.scores, plain.scores, atol=1e-3)  # the memory changed scores
    assert torch.equal(out.items, idx)
    assert torch.allclose(out.scores, top, atol=1e-4)


# ----------------------------------------------------------------------------- dense prior
class _LinearPrior(torch.nn.Module):
    """A stand-in dense head: item scores = h @ W.T."""

    def __init__(self, n_items, hidden, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(n_items, hidden, generator=g))

    def scores(self, h):
        return h.float() @ self.weight.T


def _query_states(lm, vocab, ids, mask, outcome):
    """State at the appended outcome token of each user (run alone, no padding)."""
    rows = []
    for b in range(ids.shape[0]):
        seq = torch.cat([ids[b][mask[b].bool()], torch.tensor([vocab.outcome_id(outcome)])])
        with torch.no_grad():
            rows.append(lm.base_model(input_ids=seq[None]).last_hidden_state[0, -1])
    return torch.stack(rows)


def test_prefix_log_marginals_are_the_log_mass_under_each_node():
    from sid.retrieval import prefix_log_marginals

    sizes = (4, 3, 5)
    codes = random_codes(30, list(sizes), 3)
    trie = PrefixTrie.build(codes, list(sizes))
    logp = torch.log_softmax(torch.randn(2, 30), -1)
    logp[1, :4] = float("-inf")  # excluded items carry no mass
    marg = prefix_log_marginals(logp, trie)
    assert [m.shape[1] for m in marg] == [*trie.num_nodes[1:], 30]
    for level in range(1, 3):
        for node in range(trie.num_nodes[level]):
            under = trie.item_nodes[:, level] == node
            assert torch.allclose(marg[level - 1][:, node], logp[:, under].logsumexp(-1))
    assert torch.equal(marg[-1], logp)


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_dense_prior_wide_beam_equals_brute_force_product(weight, strategy):
    """With beams enough to keep every prefix, the search returns the top items of
    SID log-prob + weight * dense log-prob, excluded items left out."""
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=4)
    apply_strategy(lm, strategy)
    ids, mask, _ = make_histories(vocab, codes, [3, 1, 2], seed=4)
    prior = _LinearPrior(30, lm.config.hidden_size, seed=4)
    exclude = torch.tensor([[0, 5, -1], [7, -1, -1], [-1, -1, -1]])
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=30, top_k=10, outcome="like",
        exclude_items=exclude, prior=prior, prior_weight=weight,
    )  # fmt: skip
    dense = torch.log_softmax(prior.scores(_query_states(lm, vocab, ids, mask, "like")), -1)
    expected = brute_force_scores(lm, vocab, trie, codes, ids, mask, "like") + weight * dense
    for b, row in enumerate(exclude.tolist()):
        expected[b, [i for i in row if i >= 0]] = float("-inf")
    top, idx = expected.topk(10, dim=1)
    assert torch.equal(out.items, idx)
    assert torch.allclose(out.scores, top, atol=1e-4)


def test_dense_prior_steers_a_narrow_beam_and_weight_zero_changes_nothing():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=5)
    ids, mask, _ = make_histories(vocab, codes, [2, 3], seed=5)
    prior = _LinearPrior(30, lm.config.hidden_size, seed=5)
    with torch.no_grad():
        prior.weight.mul_(50.0)  # a nearly one-hot prior
    plain = constrained_beam_search(lm, vocab, trie, ids, mask, num_beams=2, outcome="like")
    zero = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=2, outcome="like", prior=prior, prior_weight=0.0
    )
    assert torch.equal(plain.items, zero.items) and torch.equal(plain.scores, zero.scores)
    steered = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=2, outcome="like", prior=prior, prior_weight=100.0
    )
    dense_top = prior.scores(_query_states(lm, vocab, ids, mask, "like")).argmax(-1)
    assert torch.equal(steered.items[:, 0], dense_top)


def test_dense_prior_every_prefix_of_excluded_items_is_dropped():
    """A level-0 code whose items are all excluded never takes a beam."""
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=6)
    ids, mask, _ = make_histories(vocab, codes, [2], seed=6)
    prior = _LinearPrior(30, lm.config.hidden_size, seed=6)
    banned = (codes[:, 0] != codes[0, 0]).nonzero().flatten()  # all but code codes[0, 0]
    out = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=3, outcome="like",
        exclude_items=banned[None], prior=prior, prior_weight=1e-3,
    )  # fmt: skip
    found = out.items[0][out.items[0] >= 0]
    assert len(found) == min(3, int((codes[:, 0] == codes[0, 0]).sum()))
    assert (codes[found, 0] == codes[0, 0]).all()


def test_dense_prior_bad_arguments():
    lm, vocab, trie, codes = make_setup((4, 3), 12, seed=7)
    ids, mask, _ = make_histories(vocab, codes, [2], seed=7)
    with pytest.raises(ValueError, match="pass prior="):
        constrained_beam_search(lm, vocab, trie, ids, mask, outcome="like", prior_weight=1.0)
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="prior_weight"):
            BeamSearchConfig(prior_weight=bad)
    wrong = _LinearPrior(11, lm.config.hidden_size, seed=7)
    with pytest.raises(ValueError, match="11 items"):
        constrained_beam_search(
            lm, vocab, trie, ids, mask, outcome="like", prior=wrong, prior_weight=1.0
        )


def test_prior_scores_are_the_dense_log_probs_of_the_returned_items():
    lm, vocab, trie, codes = make_setup((4, 3, 5), 30, seed=8)
    ids, mask, _ = make_histories(vocab, codes, [3, 2], seed=8)
    prior = _LinearPrior(30, lm.config.hidden_size, seed=8)
    exclude = torch.tensor([[0, 1, 2, -1], [5, -1, -1, -1]])
    dense = torch.log_softmax(prior.scores(_query_states(lm, vocab, ids, mask, "like")), -1)
    plain = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=6, outcome="like", exclude_items=exclude
    )
    assert plain.prior_scores is None
    for weight in (0.0, 0.7):
        out = constrained_beam_search(
            lm, vocab, trie, ids, mask, num_beams=6, outcome="like", exclude_items=exclude,
            prior=prior, prior_weight=weight,
        )  # fmt: skip
        if weight == 0:  # the prior is read, not used: the same beams
            assert torch.equal(out.items, plain.items)
        ok = out.items >= 0
        assert ok.any()
        want = dense.gather(1, out.items.clamp_min(0))
        assert torch.allclose(out.prior_scores[ok], want[ok], atol=1e-5)
        assert torch.isinf(out.prior_scores[~ok]).all()
    # several queries per user (a budget): no single dense score per candidate
    budget = constrained_beam_search(
        lm, vocab, trie, ids, mask, num_beams=4, outcome={"like": 2, "watch": 2}, prior=prior
    )
    assert budget.prior_scores is None
