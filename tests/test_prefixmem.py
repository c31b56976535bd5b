import itertools
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama, unique_semantic_ids, word_tokenizer
from transformers import DynamicCache, LlamaForCausalLM

from prefixmem import PrefixMem, PrefixMemConfig, PrefixMemEmbedding
from prefixmem.memory import PrefixMemory
from prefixmem.pretrain import pretrain_prefixmem
from sid.retrieval import _cache_kwarg
from sid.vocab import SIDVocab

SIZES = [6, 5, 7]
HIDDEN = 32


def tiny_setup(*, tie=True, gate="scalar", gate_init=0.7, table_size=16, seed=0):
    """Tiny Llama with SID tokens, its vocab and an (unattached) PrefixMem."""
    tok = word_tokenizer(["<pad>", "<unk>", "<s>", "the", "movie"])
    vocab = SIDVocab(SIZES, ["like", "watch"])
    vocab.add_to_tokenizer(tok)
    model = tiny_llama(len(tok), seed=seed, hidden_size=HIDDEN, tie_word_embeddings=tie)
    pm_cfg = PrefixMemConfig(
        codebook_sizes=SIZES,
        hidden_size=HIDDEN,
        head_dim=8,
        num_heads=2,
        table_size=table_size,
        gate=gate,
        gate_init=gate_init,
    )
    return model, vocab, PrefixMem(pm_cfg).eval()


def sequence(vocab, items, outcomes):
    """Token ids [1, T]: <s> then <o_i> s_i for each item (codes tuple)."""
    ids = [2]
    for codes, o in zip(items, outcomes, strict=True):
        ids.append(vocab.outcome_id(o))
        ids += vocab.sid_token_ids(torch.tensor(codes)).tolist()
    return torch.tensor([ids])


ITEMS = [(1, 2, 3), (4, 0, 6), (1, 2, 5), (4, 0, 6), (3, 2, 3)]
OUTCOMES = ["like", "watch", "like", "like", "watch"]


# ---------------------------------------------------------------- memory


def all_prefix_vectors(mem: PrefixMemory, sizes):
    """Vectors of every full SID prefix at every level: dict (level, prefix) -> vector."""
    out = {}
    for level in range(len(sizes)):
        prefixes = list(itertools.product(*(range(k) for k in sizes[: level + 1])))
        pad = [p + (0,) * (len(sizes) - level - 1) for p in prefixes]
        v = mem(torch.full((len(pad),), level), torch.tensor(pad))
        out.update({(level, p): v[i] for i, p in enumerate(prefixes)})
    return out


def test_identical_prefixes_give_identical_vectors_and_different_prefixes_differ():
    torch.manual_seed(0)
    mem = PrefixMemory(
        PrefixMemConfig(codebook_sizes=SIZES, hidden_size=8, head_dim=4, table_size=64)
    )
    # same prefix in two positions of a batch, with different garbage after the token's level
    levels = torch.tensor([[1, 1, 2]])
    prefix = torch.tensor([[[3, 4, 0], [3, 4, 6], [3, 4, 1]]])
    v = mem(levels, prefix)
    assert torch.equal(v[0, 0], v[0, 1])
    vecs = all_prefix_vectors(mem, SIZES)
    keys = list(vecs)
    stacked = torch.stack([vecs[k] for k in keys])
    # every (level, prefix) pair has its own vector, including the same code at different levels
    assert torch.cdist(stacked, stacked).add(torch.eye(len(keys))).min() > 0
    assert not torch.equal(vecs[(0, (2,))], vecs[(1, (0, 2))][: vecs[(0, (2,))].numel()])


def test_non_sid_tokens_get_zero_memory():
    mem = PrefixMemory(PrefixMemConfig(codebook_sizes=SIZES, hidden_size=8, head_dim=4))
    v = mem(torch.tensor([-1, 0]), torch.tensor([[5, 4, 6], [5, 0, 0]]))
    assert torch.equal(v[0], torch.zeros_like(v[0]))
    assert v[1].abs().sum() > 0


def test_hashed_tables_used_beyond_direct_threshold():
    cfg = PrefixMemConfig(codebook_sizes=[16, 16, 16], hidden_size=8, head_dim=4, table_size=256)
    mem = PrefixMemory(cfg)
    # level 0 order 1 (16), level 1 order 2 (256) fit the table: direct; level 2 order 3 (4096) hashed
    assert bool(mem.is_direct[1, 1]) and bool(mem.is_direct[2, 1])
    assert not bool(mem.is_direct[2, 2])
    assert mem.sizes[2, 2].tolist() == [251, 241]  # distinct primes <= table_size, one per head
    trigrams = torch.tensor(list(itertools.product(range(16), repeat=3)))
    rows, used = mem.rows(torch.full((len(trigrams),), 2), trigrams)
    assert bool(used.all())
    local = rows[:, 2] - mem.offsets[2, 2]
    assert bool((local >= 0).all()) and bool((local < mem.sizes[2, 2]).all())
    # every hashed row of a head is used, and 4096 trigrams collide in one head a lot but almost
    # never in both heads at once
    assert local[:, 0].unique().numel() == 251
    one_head = len(trigrams) - local[:, 0].unique().numel()
    both = len(trigrams) - torch.unique(local, dim=0).shape[0]
    assert one_head > 3000 and both < 300
    # direct orders map the bigram space one-to-one
    bigrams = rows[:, 1] - mem.offsets[2, 1, 0]
    assert torch.unique(bigrams[:, 0]).numel() == 256


def test_max_order_caps_ngram_length():
    cfg = PrefixMemConfig(codebook_sizes=[4, 4, 4, 4], hidden_size=8, head_dim=4, max_order=2)
    mem = PrefixMemory(cfg)
    assert cfg.memory_dim == 2 * 2 * 4
    # level 3 with max order 2 sees only (c_3) and (c_2, c_3): c_0, c_1 do not matter
    a = mem(torch.tensor([3]), torch.tensor([[0, 1, 2, 3]]))
    b = mem(torch.tensor([3]), torch.tensor([[3, 3, 2, 3]]))
    assert torch.equal(a, b)


def test_config_json_round_trip_and_bad_values():
    cfg = PrefixMemConfig(codebook_sizes=[8, 8], hidden_size=16, gate="context", max_order=1)
    assert PrefixMemConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="gate='sigmoid'"):
        PrefixMemConfig(codebook_sizes=[8], gate="sigmoid")
    with pytest.raises(ValueError, match="codebook_sizes"):
        PrefixMemConfig(codebook_sizes=[])
    with pytest.raises(ValueError, match="unknown PrefixMemConfig keys"):
        PrefixMemConfig.from_dict({"codebook_sizes": [8], "tabel_size": 3})


# ---------------------------------------------------------------- wrapper


def test_prefix_read_from_preceding_tokens():
    model, vocab, pm = tiny_setup()
    wrapper = pm.attach(model, vocab)
    ids = sequence(vocab, ITEMS[:2], OUTCOMES[:2])  # <s> <like> a b c <watch> a b c
    lv, prefix, order_mask = wrapper.prefix_context(ids)
    assert lv[0].tolist() == [-1, -1, 0, 1, 2, -1, 0, 1, 2]
    assert prefix[0, 4].tolist() == [1, 2, 3] and prefix[0, 7].tolist() == [4, 0, 0]
    assert order_mask[0, 8].tolist() == [True, True, True]
    assert order_mask[0, 6].tolist() == [True, False, False]
    # a window that starts inside an item keeps only the n-grams it can see
    lv, prefix, order_mask = wrapper.prefix_context(ids[:, 3:])
    assert lv[0, :2].tolist() == [1, 2]
    assert order_mask[0, 1].tolist() == [True, True, False]


def test_non_sid_positions_are_unchanged():
    model, vocab, pm = tiny_setup(gate_init=1.0)
    plain = model.get_input_embeddings()(sequence(vocab, ITEMS, OUTCOMES))
    pm.attach(model, vocab)
    ids = sequence(vocab, ITEMS, OUTCOMES)
    with_mem = model.get_input_embeddings()(ids)
    lv, _ = vocab.token_levels_codes(ids)
    assert torch.equal(with_mem[lv < 0], plain[lv < 0])
    assert (with_mem[lv >= 0] - plain[lv >= 0]).abs().amax(-1).min() > 0


@pytest.mark.parametrize("gate", ["scalar", "context"])
def test_zero_gate_logits_equal_plain_model(gate):
    model, vocab, pm = tiny_setup(gate=gate, gate_init=0.0)
    ids = sequence(vocab, ITEMS, OUTCOMES)
    with torch.no_grad():
        plain = model(ids).logits
        pm.attach(model, vocab)
        attached = model(ids).logits
    assert torch.equal(plain, attached)


def test_attach_keeps_tied_head_and_detach_restores():
    model, vocab, pm = tiny_setup(tie=True)
    original = model.get_input_embeddings()
    pm.attach(model, vocab)
    wrapper = model.get_input_embeddings()
    assert isinstance(wrapper, PrefixMemEmbedding) and wrapper.accepts_prefix_codes
    assert wrapper.weight is original.weight
    assert model.get_output_embeddings().weight is wrapper.weight
    # one Parameter, so a gradient step through the head moves the input embedding too
    names = [n for n, _ in model.named_parameters()]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert any(n.startswith("model.embed_tokens.prefixmem.") for n in names)
    with pytest.raises(ValueError, match="already has a PrefixMem"):
        pm.attach(model, vocab)
    assert PrefixMem.detach(model) is pm
    assert model.get_input_embeddings() is original
    assert "prepare_inputs_for_generation" not in vars(model)


def test_attach_rejects_mismatched_model():
    model, vocab, _ = tiny_setup()
    wrong = PrefixMem(PrefixMemConfig(codebook_sizes=SIZES, hidden_size=HIDDEN + 8))
    with pytest.raises(ValueError, match="hidden_size"):
        wrong.attach(model, vocab)
    small = SimpleNamespace(codebook_sizes=SIZES, level_start=[1000, 1006, 1011], num_levels=3)
    with pytest.raises(ValueError, match="resize_model"):
        PrefixMem(PrefixMemConfig(codebook_sizes=SIZES, hidden_size=HIDDEN)).attach(model, small)


def test_attach_save_load_gives_identical_logits(tmp_path):
    model, vocab, pm = tiny_setup(gate="context", gate_init=0.5)
    pm.attach(model, vocab)
    with torch.no_grad():
        pm.gate_scale.copy_(torch.tensor([0.3, -0.2, 0.9]))
    ids = sequence(vocab, ITEMS, OUTCOMES)
    with torch.no_grad():
        before = model(ids).logits
    pm.save_pretrained(tmp_path / "prefixmem")
    pm.save_pretrained(tmp_path / "prefixmem")  # overwriting an artifact is atomic too
    PrefixMem.detach(model)
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "prefixmem"]
    assert sorted(p.name for p in (tmp_path / "prefixmem").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    lm = LlamaForCausalLM.from_pretrained(tmp_path / "model").eval()
    loaded = PrefixMem.from_pretrained(tmp_path / "prefixmem").eval()
    assert loaded.num_parameters() == pm.num_parameters() > 0
    loaded.attach(lm, vocab)
    with torch.no_grad():
        after = lm(ids).logits
    assert torch.equal(before, after)
    with pytest.raises(FileNotFoundError, match="config.json"):
        PrefixMem.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------- decoding


def allowed_pattern(vocab):
    """prefix_allowed_tokens_fn forcing <outcome> a b c <outcome> a b c ... after the prompt."""
    starts, sizes = vocab.level_start, vocab.codebook_sizes
    outcome_ids = list(vocab.outcome_ids.values())
    lv_of = dict(
        (s + c, lv) for lv, (s, k) in enumerate(zip(starts, sizes, strict=True)) for c in range(k)
    )

    def fn(batch_id, ids):
        lv = lv_of.get(int(ids[-1]), -1)
        nxt = lv + 1
        if nxt >= len(sizes):
            return outcome_ids
        return list(range(starts[nxt], starts[nxt] + sizes[nxt]))

    return fn


def test_generate_greedy_matches_full_recompute_decode():
    model, vocab, pm = tiny_setup(gate_init=2.0)
    pm.attach(model, vocab)
    prompt = sequence(vocab, ITEMS[:2], OUTCOMES[:2])
    prompt = torch.cat(
        [prompt, torch.tensor([[vocab.outcome_id("like"), vocab.level_start[0] + 1]])], 1
    )
    allowed = allowed_pattern(vocab)
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=8, do_sample=False, prefix_allowed_tokens_fn=allowed,
            output_scores=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
        ids = prompt
        manual_scores = []
        for _ in range(8):
            logits = model(ids).logits[0, -1]  # full recompute, no cache
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed(0, ids[0])] = 0
            manual_scores.append(logits + mask)
            ids = torch.cat([ids, (logits + mask).argmax().view(1, 1)], 1)
    assert torch.equal(out.sequences, ids)
    for got, want in zip(out.scores, manual_scores, strict=True):
        assert torch.allclose(got[0], want, atol=1e-5)
    # the memory matters here: decoding without the prefixes would give other scores
    wrapper = model.get_input_embeddings()
    p = int((wrapper.prefix_context(ids)[0][0] == 2).nonzero()[-1])  # last level-2 token
    alone = ids[:, p : p + 1]
    no_ctx = wrapper.prefixmem(wrapper._embed(alone), *wrapper.prefix_context(alone))
    assert not torch.allclose(no_ctx, wrapper(ids)[:, p : p + 1])


def test_generate_beam_search_scores_match_full_forward():
    model, vocab, pm = tiny_setup(gate_init=2.0)
    pm.attach(model, vocab)
    prompt = torch.cat(
        [
            sequence(vocab, ITEMS[:3], OUTCOMES[:3]).repeat(2, 1),
            torch.tensor([[vocab.outcome_id("like")], [vocab.outcome_id("watch")]]),
        ],
        1,
    )
    n_new = 6
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=n_new, num_beams=4, num_return_sequences=4, do_sample=False,
            prefix_allowed_tokens_fn=allowed_pattern(vocab), length_penalty=0.0,
            early_stopping=True, output_scores=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
        seqs = out.sequences
        logp = model(seqs).logits.log_softmax(-1)
    T = prompt.shape[1]
    picked = logp[:, T - 1 : -1].gather(-1, seqs[:, T:, None]).squeeze(-1)
    # HF scores a beam by the sum of its tokens' log-probs (length_penalty=0): recomputed from the
    # full sequences, so every beam's prefixes were right at every cached step
    assert torch.allclose(out.sequences_scores, picked.sum(-1), atol=1e-4)
    assert len({tuple(s.tolist()) for s in seqs}) == len(seqs)


def test_prefix_codes_step_by_step_equals_full_forward():
    model, vocab, pm = tiny_setup(gate="context", gate_init=1.5)
    pm.attach(model, vocab)
    emb = model.get_input_embeddings()
    history = sequence(vocab, ITEMS[:2], OUTCOMES[:2])
    target = torch.tensor(ITEMS[2])
    full = torch.cat(
        [history, torch.tensor([[vocab.outcome_id("like")]]), vocab.sid_token_ids(target)[None]], 1
    )
    with torch.no_grad():
        want = model(full).logits
        cache = DynamicCache(config=model.config)
        prompt_len = history.shape[1] + 1
        x = emb(full[:, :prompt_len])
        kw = _cache_kwarg(type(model.base_model))  # the cache fills in place
        out = model.base_model(inputs_embeds=x, use_cache=True, **{kw: cache})
        logits = [model.lm_head(out.last_hidden_state)]
        for level in range(len(SIZES)):
            # the beam search feeds one SID token with the codes decoded so far for this beam
            x = emb(
                full[:, prompt_len + level : prompt_len + level + 1],
                prefix_codes=target[None, : level + 1],
            )
            out = model.base_model(inputs_embeds=x, use_cache=True, **{kw: cache})
            logits.append(model.lm_head(out.last_hidden_state))
        got = torch.cat(logits, 1)
        # prefix_codes may also stop before the fed token (levels 0..l-1 only)
        alt = emb(full[:, -1:], prefix_codes=target[None, :2])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(alt, emb(full)[:, -1:], atol=1e-6)
    with pytest.raises(ValueError, match="needs the code of level 1"):
        emb(full[:, -1:], prefix_codes=target[None, :1])


# ---------------------------------------------------------------- pre-training


def random_catalogue(n_items, sizes, seed):
    """Unique random SIDs (no collision level), in sorted code order."""
    g = torch.Generator().manual_seed(seed)
    rows = set()
    while len(rows) < n_items:
        rows.add(tuple(int(torch.randint(0, k, (1,), generator=g)) for k in sizes))
    return unique_semantic_ids(torch.tensor(sorted(rows)), sizes)


def best_possible_next_code_accuracy(codes, level):
    """Accuracy of always guessing a prefix's most frequent child (the Bayes bound)."""
    counts = Counter((tuple(r[:level]), r[level]) for r in codes.tolist())
    best = Counter()
    for (prefix, _), n in counts.items():
        best[prefix] = max(best[prefix], n)
    return sum(best.values()) / len(codes)


def test_pretraining_lowers_loss_and_is_deterministic():
    sizes = [8, 8, 8]
    sids = random_catalogue(150, sizes, seed=1)
    emb = torch.randn(150, 12, generator=torch.Generator().manual_seed(2))
    results, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        pm = PrefixMem(
            PrefixMemConfig(codebook_sizes=sizes, hidden_size=16, head_dim=8, table_size=64)
        )
        m = pretrain_prefixmem(
            pm, sids, emb, steps=100, batch_size=64, lr=1e-2, seed=3, progress=False
        )
        results.append(m)
        states.append(pm.state_dict())
    m = results[0]
    assert m["loss_last"] < m["loss_first"] - 0.8
    # several items share a prefix, so the best any predictor can do is the majority child;
    # pre-training reaches it (level 2: 64 possible prefixes hashed into tables of <= 64 rows)
    for level in (1, 2):
        bound = best_possible_next_code_accuracy(sids.codes, level)
        assert m[f"next_code_acc_l{level}"] >= bound - 0.05, (level, bound)
    assert m["content_cos"] > 0.8
    assert not pm.memory.table.sparse  # restored for LM training with dense optimisers
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert results[0]["loss_last"] == results[1]["loss_last"]
