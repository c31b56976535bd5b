"""PrefixMem ablation: the same tiny Llama trained on the same SID sequences, with and without PrefixMem.

Arms (matched compute: same LM init, data, batches, steps, tokens, optimiser, seed):
  none            the LM alone
  pm              + PrefixMem (scalar gate), memory from scratch
  pm_pretrained   + PrefixMem (scalar gate), memory pre-trained with pretrain_prefixmem first
  pm_ctx, pm_pretrained_ctx   the same two with the context-dependent gate (optional, --arms)

The arms are trained in lock-step (one optimiser step of each arm in turn, on the same batch),
so a change in the machine's load during the run affects all arms alike and the throughput
ratios stay comparable on a shared CPU.

Reports per-level teacher-forced accuracy on the validation targets (arg-max over the level's
tokens, and arg-max over the valid trie children via sid.retrieval.teacher_forced_level_correct),
Recall@10 / NDCG@10 of sid.retrieval.constrained_beam_search, and training tokens/s.

    HF_HUB_OFFLINE=1 python benchmarks/bench_prefixmem.py            # ~10 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/bench_prefixmem.py --steps 60 --eval-users 200   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixmem import PrefixMem, PrefixMemConfig  # noqa: E402
from prefixmem.pretrain import pretrain_prefixmem  # noqa: E402
from sid.codes import SemanticIDs  # noqa: E402
from sid.data import leave_one_out, load_builtin  # noqa: E402
from sid.embed import embed_texts  # noqa: E402
from sid.model import tiny_config, tiny_text_tokenizer  # noqa: E402
from sid.vocab import SIDVocab  # noqa: E402

IGNORE = -100
ARMS = ("none", "pm", "pm_ctx", "pm_pretrained", "pm_pretrained_ctx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--codebook-sizes", default="64,64,64")
    p.add_argument("--arms", default="none,pm,pm_pretrained")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-items", type=int, default=20, help="items per training window")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table-size", type=int, default=2048)
    p.add_argument("--head-dim", type=int, default=8)
    p.add_argument("--gate-init", type=float, default=0.0)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--eval-users", type=int, default=0, help="0: all users")
    p.add_argument("--beams", type=int, default=20)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (0: torch default). 1 is steadier on a shared CPU",
    )  # fmt: skip
    p.add_argument("--out", default="", help="write the Markdown section here")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- data
def item_tokens(items, outcomes, codes, vocab) -> np.ndarray:
    """int64 [n, 1 + L]: outcome token then SID tokens of each interaction."""
    out_ids = np.array([vocab.outcome_id(o) for o in vocab.outcomes])
    sid = vocab.sid_token_ids(codes[torch.as_tensor(items)]).numpy()
    return np.concatenate([out_ids[outcomes][:, None], sid], 1)


def train_windows(split, codes, vocab, max_items: int, pad_id: int):
    """Sliding windows (stride max_items // 2) over each user's train items; every train item
    after the first is a target once. Returns input_ids, labels LongTensor [W, max_items*(1+L)]."""
    tokens = item_tokens(split.train_items, split.train_outcomes, codes, vocab)
    labels = tokens.copy()
    labels[:, 0] = IGNORE  # outcome tokens are given, not predicted
    width = tokens.shape[1] * max_items
    stride = max(1, max_items // 2)
    xs, ys = [], []
    for u in range(split.num_users):
        lo, hi = int(split.train_offsets[u]), int(split.train_offsets[u + 1])
        start, covered = 0, 0
        while hi - lo >= 2:
            end = min(start + max_items, hi - lo)
            y = labels[lo + start : lo + end].copy()
            y[: max(1, covered - start)] = IGNORE
            x = tokens[lo + start : lo + end].reshape(-1)
            y = y.reshape(-1)
            xs.append(np.pad(x, (0, width - len(x)), constant_values=pad_id))
            ys.append(np.pad(y, (0, width - len(y)), constant_values=IGNORE))
            covered = end
            if end == hi - lo:
                break
            start += stride
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))


def valid_examples(split, codes, vocab, max_items: int, pad_id: int, n_users: int):
    """Left-padded histories ending with the valid target's outcome token; gold codes [U, L]."""
    targets, target_outcomes = split.targets("valid")
    users = range(split.num_users if n_users <= 0 else min(n_users, split.num_users))
    rows = []
    for u in users:
        items, outs = split.history(u, "valid")
        items, outs = items[-(max_items - 1) :], outs[-(max_items - 1) :]
        t = item_tokens(items, outs, codes, vocab).reshape(-1).tolist()
        rows.append(t + [vocab.outcome_id(vocab.outcomes[target_outcomes[u]])])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    idx = torch.as_tensor(targets[: len(rows)])
    return ids, mask, codes[idx], idx


# ---------------------------------------------------------------------------- models
def build_lm(vocab_size: int, args) -> LlamaForCausalLM:
    torch.manual_seed(args.seed)
    cfg = tiny_config(
        vocab_size,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg)


def build_prefixmem(sizes, args, *, gate: str) -> PrefixMem:
    torch.manual_seed(args.seed + 1)
    cfg = PrefixMemConfig(
        codebook_sizes=sizes,
        hidden_size=args.hidden,
        head_dim=args.head_dim,
        num_heads=2,
        table_size=args.table_size,
        gate=gate,
        gate_init=args.gate_init,
    )
    return PrefixMem(cfg)


def lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(lm, vocab, sids, ids, mask, gold, target_idx, args) -> dict:
    from sid.metrics import ndcg_at_k, recall_at_k
    from sid.retrieval import constrained_beam_search, teacher_forced_level_correct

    lm.eval()
    L = vocab.num_levels
    free, constrained, ranked = [], [], []
    for s in range(0, len(ids), 128):
        b_ids, b_mask, b_gold = ids[s : s + 128], mask[s : s + 128], gold[s : s + 128]
        constrained.append(
            teacher_forced_level_correct(lm, vocab, sids.trie, b_ids, b_mask, b_gold)
        )
        # arg-max over the whole level's token range (no trie): how well the LM knows the SIDs
        full = torch.cat([b_ids, vocab.sid_token_ids(b_gold)], 1)
        full_mask = torch.cat([b_mask, torch.ones_like(b_gold)], 1)
        pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
        logits = lm(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
        S = full.shape[1]
        ok = []
        for lv in range(L):
            lo = vocab.level_start[lv]
            lg = logits[:, S - L - 1 + lv, lo : lo + vocab.codebook_sizes[lv]]
            ok.append(lg.argmax(-1) == b_gold[:, lv])
        free.append(torch.stack(ok, 1))
        out = constrained_beam_search(
            lm, vocab, sids.trie, b_ids, b_mask, num_beams=args.beams, top_k=10,
            return_states=False,
        )  # fmt: skip
        ranked.append(out.items)
    free, constrained, ranked = torch.cat(free), torch.cat(constrained), torch.cat(ranked)
    res = {
        "acc_free": free.float().mean(0).tolist(),
        "acc_trie": constrained.float().mean(0).tolist(),
        "recall@10": recall_at_k(ranked, target_idx, 10),
        "ndcg@10": ndcg_at_k(ranked, target_idx, 10),
    }
    lm.train()
    return res


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in arms:
        if a not in ARMS:
            raise ValueError(f"unknown arm {a!r}; choose from {ARMS}")
    sizes = [int(k) for k in args.codebook_sizes.split(",")]
    t0 = time.perf_counter()
    data = load_builtin(args.dataset)
    split = leave_one_out(data)
    vectors = embed_texts(data.item_texts)
    from sid.tokenizers.rqkmeans import RQKMeans

    raw = RQKMeans(codebook_sizes=sizes, seed=args.seed).fit(vectors).encode(vectors)
    sids = SemanticIDs.from_codes(raw, list(data.item_ids), codebook_sizes=sizes)
    sizes = [int(k) for k in sids.codebook_sizes]  # a collision level may have been added
    codes = sids.codes
    tok = tiny_text_tokenizer()
    vocab = SIDVocab(sizes, list(data.outcome_labels))
    vocab.add_to_tokenizer(tok)
    X, Y = train_windows(split, codes, vocab, args.max_items, tok.pad_token_id)
    ids, mask, gold, target_idx = valid_examples(
        split, codes, vocab, args.max_items, tok.pad_token_id, args.eval_users
    )
    prep_s = time.perf_counter() - t0
    print(
        f"data: {len(data.item_ids)} items, SID sizes {sizes}, {len(X)} windows x {X.shape[1]} "
        f"tokens, {len(ids)} eval users ({prep_s:.0f}s)",
        flush=True,
    )

    lms, opts, pms, pretrained, pretrain = {}, {}, {}, None, None
    for arm in arms:
        lm = build_lm(len(tok), args)
        if arm != "none":
            pm = build_prefixmem(sizes, args, gate="context" if arm.endswith("ctx") else "scalar")
            if arm.startswith("pm_pretrained"):
                if pretrained is None:  # pre-train once; the context arm reuses it (+ a fresh key)
                    pretrained = build_prefixmem(sizes, args, gate="scalar")
                    pretrain = pretrain_prefixmem(
                        pretrained, sids, vectors, steps=args.pretrain_steps, batch_size=512,
                        lr=1e-2, seed=args.seed, progress=False,
                    )  # fmt: skip
                    print(f"pretrain: {json.dumps({k: round(v, 4) for k, v in pretrain.items()})}")
                pm.load_state_dict(pretrained.state_dict(), strict=False)
            pm.attach(lm, vocab)
            pms[arm] = pm
        lm.train()
        lms[arm] = lm
        opts[arm] = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=0.01)

    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(X), generator=gen)
    spent = dict.fromkeys(arms, 0.0)
    losses = {a: [] for a in arms}
    n_tokens = 0
    pos = 0
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(X), generator=gen), 0
        b = order[pos : pos + args.batch_size]
        pos += args.batch_size
        x, y = X[b], Y[b]
        keep = int((x != tok.pad_token_id).sum(1).max())
        x, y = x[:, :keep], y[:, :keep]
        att = (x != tok.pad_token_id).long()
        n_tokens += int(att.sum())
        lr = lr_at(step, args.steps, args.lr)
        for arm in arms:
            lm, opt = lms[arm], opts[arm]
            for g in opt.param_groups:
                g["lr"] = lr
            t = time.perf_counter()
            logits = lm(input_ids=x, attention_mask=att).logits
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), y[:, 1:].flatten(), ignore_index=IGNORE
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
            spent[arm] += time.perf_counter() - t
            losses[arm].append(float(loss.detach()))
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d} " + " ".join(f"{a}={np.mean(losses[a][-50:]):.3f}" for a in arms),
                flush=True,
            )

    results = {}
    for arm in arms:
        t = time.perf_counter()
        res = evaluate(lms[arm], vocab, sids, ids, mask, gold, target_idx, args)
        res["tokens_per_s"] = n_tokens / spent[arm]
        res["train_loss_last50"] = float(np.mean(losses[arm][-50:]))
        res["params"] = sum(p.numel() for p in lms[arm].parameters())
        if arm in pms:
            res["prefixmem_params"] = pms[arm].num_parameters()
            res["gate"] = [round(float(g), 3) for g in pms[arm].gate_scale.detach()]
        res["eval_s"] = time.perf_counter() - t
        results[arm] = res
        print(arm, json.dumps(res), flush=True)
    report = {
        "args": vars(args),
        "sizes": sizes,
        "n_tokens": n_tokens,
        "results": results,
        "pretrain": pretrain,
        "total_s": time.perf_counter() - t0,
    }
    text = markdown(report, arms)
    print(text)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return report


def markdown(report: dict, arms: list[str]) -> str:
    res, L = report["results"], len(report["sizes"])
    base = res.get("none")
    lines = [
        "| arm | " + " | ".join(f"acc L{lv} (trie)" for lv in range(L))
        + " | " + " | ".join(f"acc L{lv} (free)" for lv in range(L))
        + " | Recall@10 | NDCG@10 | train loss | tokens/s | vs none | params |",
        "|---" * (2 * L + 7) + "|",
    ]  # fmt: skip
    for arm in arms:
        r = res[arm]
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{a:.4f}" for a in r["acc_trie"])
            + " | "
            + " | ".join(f"{a:.4f}" for a in r["acc_free"])
            + f" | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | {r['train_loss_last50']:.3f}"
            + f" | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {r['params']:,} |"
        )
    lines.append(
        f"\ntraining tokens per arm: {report['n_tokens']:,}; total {report['total_s']:.0f} s"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
