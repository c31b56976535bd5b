"""Quality under the reference protocol: our SID model vs an ID-based SASRec (CE loss).

    HF_HUB_OFFLINE=1 python benchmarks/bench_quality.py --epochs 3 --ours_epochs 1 --threads 1

Every model sees the same leave-one-out split of `load_builtin(--dataset)` (last item = test
target, second to last = validation target), is scored by full ranking over the whole
catalogue, and is reported twice: with the user's history items kept as candidates (the
protocol of the SASRec/HSTU papers) and with them excluded.

- SASRec-CE: item-ID embeddings + learned positions, causal self-attention blocks, output tied
  to the item embeddings, cross-entropy over *all* items at every position (no sampled
  negatives), each user's last `--max_len` train items.
- ours: the toolkit's tiny Llama on SID tokens (RQ-KMeans SIDs of the MiniLM item embeddings),
  trained with `sid.training.make_trainer`; with `--dense 1` also per-item ID embeddings and the
  dense retrieval head of `sid.dense` (joint loss). Rows: beam search only, dense head only,
  and dense + beam fused by `sid.dense.fuse_with_beam` with the weight that is best on the
  first `--tune_users` users of the *validation* split. `--run DIR` adds a train.py run
  directory scored by `sid.evaluation.evaluate_run`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sid import metrics as M
from sid.data import LeaveOneOutSplit


class SASRec(nn.Module):
    """Causal transformer over item ids; `forward(ids [B, T]) -> hidden [B, T, d]` (0 = pad)."""

    def __init__(
        self,
        n_items: int,
        *,
        d: int = 64,
        blocks: int = 2,
        heads: int = 1,
        max_len: int = 200,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=d, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(d)
        self.heads = heads
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.dropout(self.items(ids) * self.scale + self.positions(pos))
        # True = may not attend: later positions and padding keys; every position may attend
        # to itself, so a padding query never has all its keys masked (which gives NaN)
        eye = torch.eye(T, dtype=torch.bool, device=ids.device)
        blocked = torch.triu(torch.ones(T, T, dtype=torch.bool, device=ids.device), 1)
        blocked = blocked | ((ids == 0)[:, None, :] & ~eye)  # [B, T, T]
        h = self.blocks(x, mask=blocked.repeat_interleave(self.heads, 0))
        return self.norm(h) * (ids != 0)[..., None]

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> logits over the catalogue [..., n_items] (item i is column i)."""
        return h @ self.items.weight[1:].T


def left_padded(sequences: list[np.ndarray], max_len: int) -> torch.Tensor:
    """Item-index sequences -> LongTensor [B, max_len] of item index + 1, left-padded with 0."""
    out = torch.zeros(len(sequences), max_len, dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = seq[-max_len:]
        if len(seq):
            out[row, max_len - len(seq) :] = torch.as_tensor(seq, dtype=torch.long) + 1
    return out


def train_sasrec(
    split: LeaveOneOutSplit,
    *,
    epochs: int,
    max_len: int,
    batch_size: int,
    lr: float,
    d: int,
    seed: int,
) -> tuple[SASRec, float]:
    torch.manual_seed(seed)
    n_items = split.data.num_items
    model = SASRec(n_items, d=d, max_len=max_len)
    # each user's last max_len + 1 train items: inputs are all but the last, targets shift by one
    seqs = [split.train_sequence(u)[0][-(max_len + 1) :] for u in range(split.num_users)]
    padded = left_padded(seqs, max_len + 1)
    inputs, targets = padded[:, :-1], padded[:, 1:] - 1  # target -1 = padding, ignored
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=gen)
        total, count = 0.0, 0
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            h = model(inputs[rows])
            keep = targets[rows] >= 0
            loss = nn.functional.cross_entropy(model.scores(h[keep]), targets[rows][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * int(keep.sum()), count + int(keep.sum())
        print(f"sasrec epoch {epoch + 1}: loss {total / count:.4f}", flush=True)
    return model.eval(), time.perf_counter() - start


@torch.inference_mode()
def rank_sasrec(
    model: SASRec,
    split: LeaveOneOutSplit,
    which: str,
    *,
    max_len: int,
    exclude_history: bool,
    k: int = 20,
    batch_size: int = 256,
) -> np.ndarray:
    """Top-k item indices [U, k] for every kept user's `which` target, full ranking."""
    out = []
    for lo in range(0, split.num_users, batch_size):
        users = range(lo, min(lo + batch_size, split.num_users))
        hist = [split.history(u, which)[0] for u in users]
        scores = model.scores(model(left_padded(hist, max_len))[:, -1])
        if exclude_history:
            for row, h in enumerate(hist):
                scores[row, torch.as_tensor(h, dtype=torch.long)] = -torch.inf
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def quality(ranked: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {
        "recall@10": M.recall_at_k(ranked, gold, 10),
        "ndcg@10": M.ndcg_at_k(ranked, gold, 10),
        "recall@20": M.recall_at_k(ranked, gold, 20),
        "ndcg@20": M.ndcg_at_k(ranked, gold, 20),
    }


# --------------------------------------------------------------------------------------------
# Ours: SID LM (+ item-ID embeddings + dense head), trained by the library's own pieces


def build_sids(data, *, tokenizer: str, sizes: list[int], seed: int, policy: str = "suffix"):
    from sid.codes import SemanticIDs
    from sid.embed import embed_texts
    from sid.tokenizers import build_sid_tokenizer

    X = embed_texts(data.item_texts)
    torch.manual_seed(seed)
    tok = build_sid_tokenizer(tokenizer, codebook_sizes=sizes).fit(X)
    extra = {"distances": tok.last_level_distances(X)} if policy == "reassign" else {}
    return SemanticIDs.from_codes(
        tok.encode(X), data.item_ids, codebook_sizes=tok.codebook_sizes, policy=policy, **extra
    )


def train_ours(split, sids, args, run_dir: Path):
    """Tiny Llama on SID tokens; with --dense, item-ID embeddings + dense head, joint loss."""
    from sid.dense import DenseConfig, DenseRetrieval
    from sid.model import SIDRecModel
    from sid.training import build_train_windows, make_trainer, make_training_arguments

    torch.manual_seed(args.seed)
    rec = SIDRecModel.build("tiny", sids, split.data.outcome_labels)
    dense = None
    if args.dense:
        hidden = int(rec.lm.config.hidden_size)
        dense = DenseRetrieval(
            DenseConfig(num_items=len(sids), hidden_size=hidden, add_to_input=args.item_ids)
        )
        dense.attach(rec.lm, rec.vocab, sids)
    train = build_train_windows(
        split, sids, rec.vocab, max_items=args.max_items, stride=args.stride
    )
    targs = make_training_arguments(
        run_dir / "checkpoints",
        epochs=args.ours_epochs,
        max_steps=args.ours_max_steps,
        batch_size=args.ours_batch_size,
        grad_accum=1,
        lr=args.ours_lr,
        warmup_ratio=0.05,
        weight_decay=0.01,
        save_steps=10**9,
        eval_steps=10**9,
        logging_steps=50,
        seed=args.seed,
        precision="fp32",
        has_eval=False,
    )
    trainer = make_trainer(rec.lm, train, None, targs, rec.tokenizer.pad_token_id)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    rec.lm.eval()
    if dense is not None:
        DenseRetrieval.detach(rec.lm)
    rec.save_pretrained(run_dir)
    if dense is not None:
        dense.save_pretrained(run_dir / "dense")
        dense.attach(rec.lm, rec.vocab, sids)
    return rec, dense, seconds


@torch.inference_mode()
def score_ours(rec, dense, split, which, users, *, max_items, outcome, num_beams, exclude, batch):
    """Beam candidates and dense logits of `users` for the `which` targets (full catalogue)."""
    from sid.evaluation import history_batch
    from sid.retrieval import constrained_beam_search

    trie = rec.sids.trie
    out_tok = rec.vocab.outcome_id(outcome)
    beam_items, beam_scores, dense_logits, excluded = [], [], [], []
    for lo in range(0, len(users), batch):
        b = users[lo : lo + batch]
        ids, mask, hist = history_batch(rec, split, b, which, max_items)
        excluded.append(hist)
        out = constrained_beam_search(
            rec.lm, rec.vocab, trie, ids, mask, num_beams=num_beams, outcome=outcome,
            exclude_items=hist if exclude else None, return_states=False,
        )  # fmt: skip
        beam_items.append(out.items)
        beam_scores.append(out.scores)
        if dense is not None:
            ids2 = torch.cat([ids, torch.full((len(b), 1), out_tok)], 1)
            mask2 = torch.cat([mask, torch.ones(len(b), 1, dtype=torch.long)], 1)
            pos = (mask2.cumsum(-1) - 1).clamp_min(0)
            h = rec.lm.base_model(
                input_ids=ids2, attention_mask=mask2, position_ids=pos
            ).last_hidden_state[:, -1]
            dense_logits.append(dense.scores(h))
    width = max(e.shape[1] for e in excluded)
    hist = torch.cat(
        [torch.nn.functional.pad(e, (0, width - e.shape[1]), value=-1) for e in excluded]
    )
    return {
        "items": torch.cat(beam_items),
        "scores": torch.cat(beam_scores),
        "dense": torch.cat(dense_logits) if dense_logits else None,
        "history": hist,
    }


def bench_ours(args, data, split, gold, protocols, show) -> None:
    """Train our SID model with the bench flags and show its rows (both protocols)."""
    from sid.dense import fuse_with_beam

    t0 = time.perf_counter()
    sids = build_sids(
        data, tokenizer=args.sid_tokenizer,
        sizes=[int(x) for x in args.codebook_sizes.split(",")], seed=args.seed,
        policy=args.collision_policy,
    )  # fmt: skip
    sid_seconds = time.perf_counter() - t0
    rec, dense, seconds = train_ours(split, sids, args, Path(args.ours_dir))
    label = f"ours ({'item-ID emb + ' if args.dense and args.item_ids else ''}"
    label += f"{'dense head, ' if args.dense else ''}{args.ours_epochs:g} ep)"
    timing = {"train_seconds": round(seconds, 1), "sid_seconds": round(sid_seconds, 1)}
    counts = np.bincount(split.train_outcomes, minlength=len(data.outcome_labels))
    outcome = data.outcome_labels[int(counts.argmax())]
    common = dict(max_items=args.max_items, outcome=outcome, num_beams=args.num_beams, batch=128)

    weight = 0.0
    if dense is not None:
        # fusion weight chosen on the validation split (never on test)
        users = np.arange(min(args.tune_users, split.num_users))
        valid = score_ours(rec, dense, split, "valid", users, exclude=False, **common)
        vgold = split.targets("valid")[0][users]
        best = -1.0
        for w in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0):
            ranked = fuse_with_beam(
                valid["dense"], valid["items"], valid["scores"], beam_weight=w, k=20
            )
            nd = M.ndcg_at_k(ranked.numpy(), vgold, 10)
            print(f"valid fusion beam_weight={w}: ndcg@10 {nd:.4f}", flush=True)
            if nd > best:
                best, weight = nd, w
    for keep in protocols:
        protocol = "history kept" if keep else "history excluded"
        t1 = time.perf_counter()
        res = score_ours(
            rec, dense, split, "test", np.arange(split.num_users), exclude=not keep, **common
        )
        show(f"{label}: beam only, {protocol}", {**quality(res["items"].numpy(), gold), **timing})
        if dense is not None:
            ex = None if keep else res["history"]
            ranked = fuse_with_beam(
                res["dense"], res["items"], res["scores"], beam_weight=0.0, k=20, exclude=ex
            )
            show(f"{label}: dense only, {protocol}", quality(ranked.numpy(), gold))
            ranked = fuse_with_beam(
                res["dense"], res["items"], res["scores"], beam_weight=weight, k=20, exclude=ex
            )
            show(f"{label}: dense + beam (w={weight:g}), {protocol}", quality(ranked.numpy(), gold))
        print(f"eval {protocol}: {time.perf_counter() - t1:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-1m")
    parser.add_argument("--run", default=None, help="Also evaluate this train.py run directory.")
    parser.add_argument("--epochs", type=int, default=3, help="SASRec training epochs.")
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_sasrec", action="store_true")
    parser.add_argument(
        "--skip_ours",
        action="store_true",
        help="Do not train ours: SASRec-CE rows and --run's rows only.",
    )
    parser.add_argument("--ours_dir", default="runs/bench-quality-ours")
    parser.add_argument("--ours_epochs", type=float, default=1.0)
    parser.add_argument("--ours_max_steps", type=int, default=-1)
    parser.add_argument("--ours_lr", type=float, default=2e-3)
    parser.add_argument("--max_items", type=int, default=100)
    parser.add_argument("--stride", type=int, default=100, help="Window step in items.")
    parser.add_argument("--ours_batch_size", type=int, default=32)
    parser.add_argument("--collision_policy", default="reassign")
    parser.add_argument("--sid_tokenizer", default="rqkmeans")
    parser.add_argument("--codebook_sizes", default="256,256,256")
    parser.add_argument("--dense", type=int, default=1, help="1: dense head + joint loss.")
    parser.add_argument("--item_ids", type=int, default=1, help="1: item-ID input embeddings.")
    parser.add_argument("--tune_users", type=int, default=1000, help="Valid users for fusion.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="Write the rows as JSON here too.")
    parser.add_argument(
        "--kept_only", action="store_true", help="Score only the history-kept protocol."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    protocols = (True,) if args.kept_only else (True, False)

    from sid.data import leave_one_out, load_builtin

    data = load_builtin(args.dataset)
    split = leave_one_out(data)
    gold = split.targets("test")[0]
    rows: dict[str, dict] = {}

    def show(name, values):
        rows[name] = values
        print(f"ROW | {name} | " + " | ".join(f"{values[c]:.4f}" for c in COLUMNS), flush=True)

    if not args.skip_sasrec:
        model, seconds = train_sasrec(
            split, epochs=args.epochs, max_len=args.max_len, batch_size=args.batch_size,
            lr=args.lr, d=args.d, seed=args.seed,
        )  # fmt: skip
        for keep in protocols:
            protocol = "history kept" if keep else "history excluded"
            ranked = rank_sasrec(
                model, split, "test", max_len=args.max_len, exclude_history=not keep
            )
            show(
                f"SASRec-CE (d={args.d}, 2 blocks, {args.epochs} ep), {protocol}",
                {**quality(ranked, gold), "train_seconds": round(seconds, 1)},
            )

    if not args.skip_ours:
        bench_ours(args, data, split, gold, protocols, show)

    reports: dict[str, dict] = {}  # --run's full evaluate_run results, per protocol
    if args.run:
        from sid.evaluation import evaluate_run

        for keep in protocols:
            protocol = "history kept" if keep else "history excluded"
            res = evaluate_run(
                args.run, num_beams=args.num_beams, top_k=args.num_beams,
                exclude_history=not keep, write_report=False,
            )  # fmt: skip
            reports[protocol] = res
            name = Path(args.run).name
            for kind in ("popularity", "retrieval", "retrieval+ranking", "dense", "dense+beam"):
                if kind in res:
                    show(f"{name} (train.py run) {kind}, {protocol}", res[kind])
    print(
        f"\n{split.data.name}, test split, {split.num_users} users, full ranking over "
        f"{split.data.num_items} items\n"
    )
    print("| model | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in COLUMNS) + " |")
    if args.out:
        payload = {**rows, "run_reports": reports} if reports else rows
        Path(args.out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
