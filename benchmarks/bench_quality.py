"""Quality under the reference protocol: our SID model vs an ID-based SASRec (CE loss).

    HF_HUB_OFFLINE=1 python benchmarks/bench_quality.py --ours_epochs 1 --threads 1

Every model sees the same leave-one-out split of `load_builtin(--dataset)` (last item = test
target, second to last = validation target), is scored by full ranking over the whole
catalogue, and is reported twice: with the user's history items excluded (the protocol
behind the published ML-1M figures, the headline) and with them kept as candidates.

- SASRec-CE: item-ID embeddings + learned positions, causal self-attention blocks, output tied
  to the item embeddings, cross-entropy over *all* items at every position (no sampled
  negatives), each user's last `--max_len` train items, dropout 0.2. By default it trains until
  validation NDCG@10 (history excluded, full ranking) has not improved for `--patience` epochs
  and restores the best epoch (`--epochs N`: a fixed budget instead). `--sasrec_dir` keeps a
  checkpoint per epoch (resumed by a rerun with the same options) and, once finished,
  `sasrec.json` with the curve and the test metrics, which later runs reuse without training.
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
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

# everything the SASRec-CE run needs is imported here, at process start: a run of hours must
# not pick up half-edited modules of a checkout that changes under it
from sid import metrics as M
from sid.artifacts import atomic_path
from sid.data import LeaveOneOutSplit, leave_one_out, load_builtin


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
    users: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k item indices [U, k] for `users` (default: every kept user), `which` targets,
    full ranking over the catalogue. The model must be in eval mode."""
    users = np.arange(split.num_users) if users is None else np.asarray(users)
    out = []
    for lo in range(0, len(users), batch_size):
        hist = [split.history(int(u), which)[0] for u in users[lo : lo + batch_size]]
        scores = model.scores(model(left_padded(hist, max_len))[:, -1])  # [b, n_items]
        if exclude_history:
            rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
            scores[torch.as_tensor(rows), torch.as_tensor(np.concatenate(hist))] = -torch.inf
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def score_valid(model: SASRec, split: LeaveOneOutSplit, users: np.ndarray, *, max_len: int):
    """Validation NDCG@10 / Recall@10 of `users`, history excluded, full ranking."""
    ranked = rank_sasrec(
        model, split, "valid", max_len=max_len, exclude_history=True, k=10, users=users
    )
    gold = split.targets("valid")[0][users]
    return {"ndcg@10": M.ndcg_at_k(ranked, gold, 10), "recall@10": M.recall_at_k(ranked, gold, 10)}


# --------------------------------------------------------------------------------------------
# SASRec-CE training: early stopping on validation, one checkpoint file per run directory

CHECKPOINT = "checkpoint.safetensors"  # model, best model, Adam moments, RNG states, record
RECORD = "sasrec.json"  # the same record, readable: options, validation curve, test metrics
CURVE = "valid_curve.png"
CURVE_DEPTH = 100  # the test Recall@K curve goes to K = 100


def _write_atomic(path: Path, write) -> None:
    """`write(tmp_path)` through the project's one atomic write: a crash never leaves half
    a file."""
    with atomic_path(path) as tmp:
        write(tmp)


def check_options(saved: dict, wanted: dict, where: Path) -> None:
    """Refuse to resume or reuse a run trained with other options."""
    diff = {k: (saved.get(k), wanted.get(k)) for k in saved.keys() | wanted.keys()}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        said = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(
            f"{where} holds a SASRec-CE run with other options ({said}); pass another "
            "--sasrec_dir, or delete that folder to train from scratch"
        )


def save_checkpoint(path: Path, model, best_state, opt, gen, record: dict) -> None:
    """Everything needed to continue the run, as safetensors tensors + JSON metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_state.items()}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():  # Adam: step, exp_avg, exp_avg_sq
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()  # dropout
    tensors["rng.shuffle"] = gen.get_state()  # batch order
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    _write_atomic(
        path, lambda tmp: save_file(tensors, tmp, metadata={"record": json.dumps(record)})
    )


def load_checkpoint(path: Path, options: dict, model, opt, gen) -> tuple[dict, dict]:
    """Restore model, Adam state and RNG states in place; return (best_state, record)."""
    with safe_open(path, framework="pt") as f:
        record = json.loads(f.metadata()["record"])
        check_options(record["options"], options, path.parent)
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model."))
    state: dict[int, dict] = {}
    for key, value in part("optim.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # param_groups (lr, betas …) come from the options, which check_options found equal
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.shuffle"])
    return part("best."), record


def plot_curve(record: dict, path: Path) -> None:
    """Validation NDCG@10 and Recall@10 per epoch, best epoch marked, as a PNG."""
    curve = record["curve"]
    epochs = [row["epoch"] for row in curve]
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, [row["valid_recall@10"] for row in curve], label="Recall@10")
    ax.plot(epochs, [row["valid_ndcg@10"] for row in curve], label="NDCG@10")
    best = record["best_epoch"]
    if best:
        value = curve[best - 1]["valid_ndcg@10"]
        ax.axvline(best, color="grey", linestyle="--", linewidth=1)
        ax.plot([best], [value], "o", color="black", label=f"best epoch {best}: {value:.4f}")
    o = record["options"]
    ax.set_title(
        f"SASRec-CE on {o['dataset']}: validation ({o['valid_users']} users, history excluded)",
        fontsize=10,
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("metric")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def sasrec_options(
    split: LeaveOneOutSplit,
    *,
    max_len: int,
    batch_size: int,
    lr: float,
    d: int,
    seed: int,
    dropout: float,
    epochs: int | None,
    patience: int,
    max_epochs: int,
    valid_users: int,
) -> dict:
    """What defines a SASRec-CE run: a saved run is resumed or reused only if these match."""
    n_valid = split.num_users if valid_users <= 0 else min(valid_users, split.num_users)
    return {
        "dataset": split.data.name,
        "users": split.num_users,
        "items": split.data.num_items,
        "max_len": max_len,
        "d": d,
        "blocks": 2,
        "heads": 1,
        "dropout": dropout,
        "batch_size": batch_size,
        "lr": lr,
        "adam_betas": [0.9, 0.98],
        "seed": seed,
        "epochs": epochs,
        "patience": None if epochs else patience,
        "max_epochs": epochs or max_epochs,
        "valid_users": n_valid,
        "valid_protocol": "history excluded, full ranking",
    }


def train_sasrec(
    split: LeaveOneOutSplit,
    *,
    max_len: int,
    batch_size: int,
    lr: float,
    d: int,
    seed: int,
    dropout: float = 0.2,
    epochs: int | None = None,
    patience: int = 10,
    max_epochs: int = 400,
    valid_users: int = 0,
    run_dir: str | Path | None = None,
) -> tuple[SASRec, dict]:
    """Train SASRec-CE; return (model, record).

    With `epochs`, a fixed budget: the last epoch's model. Without, early stopping: after
    each epoch the validation targets of the first `valid_users` users (0 = all) are ranked
    over the whole catalogue with history excluded, training stops once NDCG@10 has not
    improved for `patience` epochs (or at `max_epochs`), and the best epoch's weights are
    restored. Test targets are never looked at here.

    With `run_dir`, every epoch leaves a checkpoint (safetensors) + `sasrec.json` + the curve
    PNG there, and a call with the same options resumes from it (or returns the finished run).
    `record`: options, curve (per epoch: loss, valid metrics, seconds), epochs_run,
    best_epoch, train_seconds (training + validation, summed over resumes), finished.
    """
    options = sasrec_options(
        split, max_len=max_len, batch_size=batch_size, lr=lr, d=d, seed=seed, dropout=dropout,
        epochs=epochs, patience=patience, max_epochs=max_epochs, valid_users=valid_users,
    )  # fmt: skip
    n_items = split.data.num_items
    torch.manual_seed(seed)
    model = SASRec(n_items, d=d, max_len=max_len, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    users = np.arange(options["valid_users"])
    record = {
        "options": options,
        "curve": [],
        "epochs_run": 0,
        "best_epoch": 0,
        "best_valid_ndcg@10": None,
        "train_seconds": 0.0,
        "finished": False,
        "stopped": None,
    }
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and (run_dir / CHECKPOINT).exists():
        best_state, record = load_checkpoint(run_dir / CHECKPOINT, options, model, opt, gen)
        print(f"sasrec: resumed {run_dir} after epoch {record['epochs_run']}", flush=True)

    # each user's last max_len + 1 train items: inputs are all but the last, targets shift by one
    seqs = [split.train_sequence(u)[0][-(max_len + 1) :] for u in range(split.num_users)]
    padded = left_padded(seqs, max_len + 1)
    inputs, targets = padded[:, :-1], padded[:, 1:] - 1  # target -1 = padding, ignored
    best = -math.inf if record["best_valid_ndcg@10"] is None else record["best_valid_ndcg@10"]
    while not record["finished"]:
        epoch = record["epochs_run"] + 1
        start = time.perf_counter()
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
        train_seconds = time.perf_counter() - start
        model.eval()
        valid = score_valid(model, split, users, max_len=max_len)
        valid_seconds = time.perf_counter() - start - train_seconds
        if valid["ndcg@10"] > best:
            best, record["best_epoch"] = valid["ndcg@10"], epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        record["curve"].append(
            {
                "epoch": epoch,
                "loss": round(total / count, 6),
                "valid_ndcg@10": valid["ndcg@10"],
                "valid_recall@10": valid["recall@10"],
                "train_seconds": round(train_seconds, 2),
                "valid_seconds": round(valid_seconds, 2),
            }
        )
        record["epochs_run"] = epoch
        record["best_valid_ndcg@10"] = best
        record["train_seconds"] = round(record["train_seconds"] + train_seconds + valid_seconds, 2)
        if epochs:
            record["finished"] = epoch >= epochs
            record["stopped"] = f"fixed budget of {epochs} epochs" if record["finished"] else None
        elif epoch - record["best_epoch"] >= patience:
            record["finished"] = True
            record["stopped"] = f"no valid NDCG@10 gain for {patience} epochs"
        elif epoch >= max_epochs:
            record["finished"] = True
            record["stopped"] = f"max_epochs {max_epochs} reached"
        print(
            f"sasrec epoch {epoch}: loss {total / count:.4f}, valid ndcg@10 {valid['ndcg@10']:.4f}"
            f" recall@10 {valid['recall@10']:.4f} (best {best:.4f} at epoch "
            f"{record['best_epoch']}), {train_seconds:.1f}s train + {valid_seconds:.1f}s valid",
            flush=True,
        )
        model.train()
        if run_dir is not None:
            write_sasrec_run(run_dir, record, model, best_state, opt, gen)
    if not epochs:  # early stopping: the best epoch's weights, chosen on validation
        model.load_state_dict(best_state)
    record["model_epoch"] = record["epochs_run"] if epochs else record["best_epoch"]
    return model.eval(), record


def write_sasrec_run(run_dir: Path, record: dict, model=None, best_state=None, opt=None, gen=None):
    """Checkpoint (when a model is given), sasrec.json and the curve PNG, each atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_checkpoint(run_dir / CHECKPOINT, model, best_state, opt, gen, record)
    text = json.dumps(record, indent=1)
    _write_atomic(run_dir / RECORD, lambda tmp: tmp.write_text(text))
    plot_curve(record, run_dir / CURVE)


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
    from sid.training import build_train_windows, make_trainer, training_arguments

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
    targs = training_arguments(
        run_dir / "checkpoints",
        num_train_epochs=args.ours_epochs,
        max_steps=args.ours_max_steps,
        per_device_train_batch_size=args.ours_batch_size,
        learning_rate=args.ours_lr,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        seed=args.seed,
        bf16=False,
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


def bench_sasrec(args, split, gold, protocols, show) -> None:
    """SASRec-CE rows: reuse a finished run of `--sasrec_dir`, or train (resuming) and score
    test once, both protocols, with the model chosen on validation."""
    short = args.dataset.replace("movielens-", "ml")
    run_dir = Path(
        args.sasrec_dir or f"runs/sasrec-{short}{f'-{args.epochs}ep' if args.epochs else ''}"
    )
    hyper = dict(
        max_len=args.max_len, batch_size=args.batch_size, lr=args.lr, d=args.d, seed=args.seed,
        dropout=args.dropout, epochs=args.epochs, patience=args.patience,
        max_epochs=args.max_epochs, valid_users=args.valid_users,
    )  # fmt: skip
    path = run_dir / RECORD
    record = json.loads(path.read_text()) if path.exists() else {}
    if "test" in record:
        check_options(record["options"], sasrec_options(split, **hyper), run_dir)
        print(
            f"sasrec: reused {path} ({record['epochs_run']} epochs, best epoch "
            f"{record['best_epoch']}, trained {record['train_seconds'] / 60:.1f} min)",
            flush=True,
        )
    else:
        model, record = train_sasrec(split, **hyper, run_dir=run_dir)
        start = time.perf_counter()
        record["test"] = {}
        for keep in (False, True):  # both protocols, so the saved run is complete
            protocol = "history kept" if keep else "history excluded"
            ranked = rank_sasrec(
                model, split, "test", max_len=args.max_len, exclude_history=not keep,
                k=min(CURVE_DEPTH, split.data.num_items),
            )  # fmt: skip
            record["test"][protocol] = quality(ranked, gold)
            if not keep:  # the headline protocol's Recall@K, K = 1 … CURVE_DEPTH, for plots
                record["test"]["recall_curve"] = M.recall_curve(ranked, gold)
        record["test_seconds"] = round(time.perf_counter() - start, 1)
        write_sasrec_run(run_dir, record)
        print(f"sasrec: wrote {path}", flush=True)
    figure = args.figure
    if figure == "auto":
        figure = None if args.epochs else f"benchmarks/figures/sasrec_{short}_valid_curve.png"
    if figure:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(Path(figure), lambda tmp: shutil.copyfile(run_dir / CURVE, tmp))
        print(f"sasrec: validation curve in {figure}", flush=True)
    budget = (
        f"{args.epochs} ep"
        if args.epochs
        else f"early stop: best ep {record['best_epoch']} of {record['epochs_run']}"
    )
    for keep in protocols:
        protocol = "history kept" if keep else "history excluded"
        show(
            f"SASRec-CE (d={args.d}, 2 blocks, {budget}), {protocol}",
            {**record["test"][protocol], "train_seconds": record["train_seconds"]},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-1m")
    parser.add_argument("--run", default=None, help="Also evaluate this train.py run directory.")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="SASRec: a fixed number of epochs. Default: early stopping on validation.",
    )
    parser.add_argument(
        "--patience", type=int, default=10, help="SASRec: epochs without valid NDCG@10 gain."
    )
    parser.add_argument("--max_epochs", type=int, default=400, help="SASRec: early-stop cap.")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument(
        "--valid_users", type=int, default=0, help="SASRec: first N users validate (0 = all)."
    )
    parser.add_argument(
        "--sasrec_dir",
        default=None,
        help="SASRec checkpoint + sasrec.json + curve (resumed, and reused once finished). "
        "Default runs/sasrec-DATASET (runs/sasrec-DATASET-Nep with --epochs N).",
    )
    parser.add_argument(
        "--figure",
        default="auto",
        help="Copy the validation curve PNG here ('auto': benchmarks/figures/"
        "sasrec_DATASET_valid_curve.png without --epochs; '' for none).",
    )
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

    data = load_builtin(args.dataset)
    split = leave_one_out(data)
    gold = split.targets("test")[0]
    rows: dict[str, dict] = {}

    def show(name, values):
        rows[name] = values
        print(f"ROW | {name} | " + " | ".join(f"{values[c]:.4f}" for c in COLUMNS), flush=True)

    if not args.skip_sasrec:
        bench_sasrec(args, split, gold, protocols, show)

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
