"""The training pipeline as stages over a run directory: data → embeddings → SID tokenizer →
semantic IDs → (PrefixMem pre-training) → LM fine-tuning → (ranking head).

train.py only parses arguments and calls `run_training`. Each stage records a fingerprint of
its inputs in `stages.json`; when its artifact exists with the same fingerprint the stage is
skipped, so re-running a finished command costs seconds and changing one option redoes only
what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from sid.artifacts import dumps_strict, replace_path, write_json_atomic
from sid.data import (
    BUILTIN_DATASETS,
    InteractionData,
    LeaveOneOutSplit,
    format_summary,
    leave_one_out,
    load_builtin,
    load_interactions,
    load_items,
)
from sid.embed import (
    check_embeddings,
    embed_texts,
    load_item_embeddings,
    save_embeddings,
)

# --------------------------------------------------------------------------------------------
# Arguments (parsed by HfArgumentParser in train.py; every field's help is shown by --help)


@dataclass
class DataArguments:
    dataset: str = field(
        default="movielens-100k",
        metadata={
            "help": f"Built-in dataset ({', '.join(BUILTIN_DATASETS)}) or an interactions file "
            "(CSV/TSV/Parquet/JSONL or a saved HF dataset folder); then pass --items too."
        },
    )
    items: str | None = field(
        default=None, metadata={"help": "Items file with item ids and text (custom datasets)."}
    )
    user_col: str = field(default="user_id", metadata={"help": "Interactions: user id column."})
    item_col: str = field(default="item_id", metadata={"help": "Interactions: item id column."})
    items_item_col: str = field(default="item_id", metadata={"help": "Items: item id column."})
    time_col: str = field(default="timestamp", metadata={"help": "Interactions: time column."})
    outcome_col: str | None = field(
        default=None, metadata={"help": "Interactions: outcome label column (click/save/…)."}
    )
    rating_col: str | None = field(
        default=None,
        metadata={"help": "Interactions: rating column; outcome = like if >= --like_threshold."},
    )
    text_cols: str = field(
        default="text", metadata={"help": "Items: comma-separated text columns, joined by ' | '."}
    )
    like_threshold: float = field(default=4.0, metadata={"help": "Rating >= this is 'like'."})
    unknown_items: str = field(
        default="error",
        metadata={"help": "Interactions naming items absent from the items file: error | drop."},
    )
    min_length: int = field(
        default=3, metadata={"help": "Users with fewer interactions are dropped (>= 3)."}
    )
    embeddings: str | None = field(
        default=None,
        metadata={"help": "Precomputed item embeddings (.npy/.safetensors/.parquet) to use."},
    )
    embedding_model: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "Sentence encoder: the offline MiniLM alias, a folder or a hub id."},
    )


@dataclass
class SIDArguments:
    sid_tokenizer: str = field(default="rqvae", metadata={"help": "rqvae | rqkmeans."})
    codebook_sizes: str = field(
        default="256,256,256", metadata={"help": "Codes per level, comma-separated."}
    )
    collision_policy: str = field(
        default="suffix", metadata={"help": "suffix (extra level) | reassign (nearest free code)."}
    )
    sid_epochs: int = field(default=150, metadata={"help": "RQ-VAE training epochs."})


@dataclass
class ModelArguments:
    model: str = field(
        default="tiny",
        metadata={
            "help": "tiny (random small Llama), smollm2-135m (shipped pretrained), "
            "a local model folder or a hub model id."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a model's own code to run (off by default)."}
    )
    max_items: int = field(default=50, metadata={"help": "Items per training window."})
    stride: int | None = field(
        default=None, metadata={"help": "Window step in items (default max_items // 2)."}
    )
    outcome_loss: bool = field(
        default=False, metadata={"help": "Also train on predicting outcome tokens."}
    )
    prefixmem: bool = field(
        default=False, metadata={"help": "Attach a new PrefixMem to the LM (trained with it)."}
    )
    prefixmem_pretrain: bool = field(
        default=False, metadata={"help": "Pre-train PrefixMem on the SIDs alone, then attach it."}
    )
    prefixmem_path: str | None = field(
        default=None, metadata={"help": "Attach a saved PrefixMem folder instead."}
    )
    prefixmem_steps: int = field(default=300, metadata={"help": "PrefixMem pre-training steps."})
    prefixmem_table_size: int = field(
        default=16_384, metadata={"help": "PrefixMem: largest directly indexed / hashed table."}
    )
    prefixmem_head_dim: int = field(default=16, metadata={"help": "PrefixMem: width of a row."})
    ranker: bool = field(
        default=False, metadata={"help": "Train the cross-attention ranking head after the LM."}
    )
    ranker_steps: int = field(default=300, metadata={"help": "Ranking head training steps."})
    ranker_beam_negatives: int = field(
        default=16, metadata={"help": "Ranking head: beam-search negatives per example."}
    )
    ranker_random_negatives: int = field(
        default=4,
        metadata={"help": "Ranking head: random catalogue negatives (with --ranker_features 0)."},
    )
    ranker_features: bool = field(
        default=True,
        metadata={
            "help": "Ranking head reads each candidate's beam log-prob and trains on the beam's "
            "own lists (--ranker_beam_negatives long); False: the older head without it."
        },
    )
    dense: bool = field(
        default=False,
        metadata={
            "help": "Per-item ID embeddings + a dense retrieval head (dot product over item "
            "vectors, full-softmax loss with the LM's); eval merges its top items with the beam."
        },
    )
    dense_weight: float = field(
        default=1.0, metadata={"help": "Weight of the dense head's loss beside the LM loss."}
    )


@dataclass
class RunArguments:
    run_dir: str = field(default="runs/quickstart", metadata={"help": "Run directory."})
    preset: str | None = field(
        default=None,
        metadata={"help": "quickstart | ml1m | smollm2: a set of defaults; flags still override."},
    )
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the windows."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (>0)."})
    batch_size: int = field(default=32, metadata={"help": "Windows per device per step."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    lr: float = field(default=2e-3, metadata={"help": "Peak learning rate (cosine schedule)."})
    warmup: float = field(default=0.05, metadata={"help": "Warm-up as a share of the steps."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps."})
    eval_users: int = field(
        default=0, metadata={"help": "Validate on the first N users only (0: all users)."}
    )
    eval_steps: int = field(default=200, metadata={"help": "Validation every N steps."})
    logging_steps: int = field(default=20, metadata={"help": "Log every N steps."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 if available) | fp32."})
    seed: int = field(default=0, metadata={"help": "Seed for every stage."})
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest checkpoint in the run."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a run directory built from other SIDs."}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)."})


ARGUMENT_CLASSES = (DataArguments, SIDArguments, ModelArguments, RunArguments)
RANKER_BINDING = "trained_for.json"

PRESETS: dict[str, dict] = {
    # MovieLens-100K + MiniLM + RQ-VAE + tiny model: the README's quick start, minutes on CPU.
    "quickstart": dict(
        dataset="movielens-100k",
        sid_tokenizer="rqvae",
        codebook_sizes="64,64,64",
        model="tiny",
        max_items=20,
        epochs=2.0,
        batch_size=64,
        lr=3e-3,
        prefixmem=True,
        prefixmem_table_size=2048,
        prefixmem_head_dim=8,
        run_dir="runs/quickstart",
    ),
    # MovieLens-1M: RQ-KMeans SIDs without a collision level, non-overlapping 100-item
    # windows, the dense head + item-ID embeddings, 4 epochs: 31 min on 2 CPU cores (BENCHMARKS.md).
    "ml1m": dict(
        dataset="movielens-1m",
        sid_tokenizer="rqkmeans",
        codebook_sizes="256,256,256",
        collision_policy="reassign",
        model="tiny",
        max_items=100,
        stride=100,
        epochs=4.0,
        batch_size=32,
        dense=True,
        eval_users=1000,
        eval_steps=500,
        save_steps=500,
        logging_steps=50,
        run_dir="runs/ml1m",
    ),
    "smollm2": dict(
        dataset="movielens-100k",
        sid_tokenizer="rqvae",
        codebook_sizes="64,64,64",
        model="smollm2-135m",
        max_items=20,
        max_steps=20,
        batch_size=8,
        lr=5e-4,
        save_steps=10,
        eval_steps=10,
        eval_users=64,
        logging_steps=5,
        run_dir="runs/smollm2",
    ),
}


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"codebook sizes must be comma-separated integers, got {text!r}") from None
    if not sizes:
        raise ValueError("codebook sizes are empty")
    return sizes


# --------------------------------------------------------------------------------------------
# Run directory bookkeeping


def fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class RunDir:
    """A run directory, its `stages.json` (stage → fingerprint of the inputs it used) and the
    staging folder where this run writes.

    Stages never write into the run directory itself: they write into `staging`
    (`RUN/.staging-rank<R>/`) and `mark` a pending fingerprint. Only `commit`, called once the
    whole run has been accepted, swaps the staged artifacts in. A run that is refused or
    crashes leaves the run directory exactly as it was; its staging folder is removed (or, after
    a crash, at the next start). Reused artifacts are read from `path`, new ones from `staging`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run directory {self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._stages_file = self.path / "stages.json"
        self.stages: dict[str, str] = {}
        self.pending: dict[str, str] = {}
        if self._stages_file.exists():
            try:
                self.stages = json.loads(self._stages_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{self._stages_file} is corrupt ({err}); delete it to rebuild the run"
                ) from err
            if not isinstance(self.stages, dict):
                raise ValueError(f"{self._stages_file} is not a JSON object; delete it")
        self.staging = self.path / f".staging-rank{os.environ.get('RANK', '0')}"
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a crashed run
        self.staging.mkdir()

    def fresh(self, stage: str, key: str, artifact: str) -> bool:
        """True when the committed `artifact` was built by inputs with fingerprint `key`."""
        return self.stages.get(stage) == key and (self.path / artifact).exists()

    def mark(self, stage: str, key: str) -> None:
        """Record that `stage` was rebuilt with `key`; written to stages.json by `commit`."""
        self.pending[stage] = key

    def mark_now(self, stage: str, key: str) -> None:
        """Record bookkeeping that must survive a crash (e.g. which options made checkpoints)."""
        self.stages[stage] = key
        on_disk = {}
        if self._stages_file.exists():
            on_disk = json.loads(self._stages_file.read_text(encoding="utf-8"))
        write_json_atomic(self._stages_file, {**on_disk, stage: key})

    def discard(self) -> None:
        """Drop everything this run staged; the run directory is untouched."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.pending.clear()

    def commit(self, remove: tuple[str, ...] = ()) -> None:
        """Swap every staged artifact into the run directory and record the new fingerprints.

        Order matters for crash safety: the fingerprints of the stages being replaced are
        dropped from stages.json first, then each artifact is renamed into place (a directory
        is moved aside, then replaced), then the new fingerprints are written. A crash in the
        middle therefore makes the next run rebuild those stages, never reuse a mismatch.
        `remove` names committed artifacts that no longer belong to the run (e.g. a PrefixMem
        of an earlier model trained without one).
        """
        staged = sorted(p.name for p in self.staging.iterdir())
        stale = [name for name in remove if (self.path / name).exists() and name not in staged]
        self.stages = {k: v for k, v in self.stages.items() if k not in self.pending}
        write_json_atomic(self._stages_file, self.stages)
        for name in staged:
            replace_path(self.staging / name, self.path / name)
        for name in stale:
            _remove(self.path / name)
        self.stages.update(self.pending)
        write_json_atomic(self._stages_file, self.stages)
        self.discard()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def log(message: str) -> None:
    print(f"[sid] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Stages


def load_data(args: DataArguments) -> tuple[InteractionData, LeaveOneOutSplit]:
    if args.dataset in BUILTIN_DATASETS:
        data = load_builtin(args.dataset, like_threshold=args.like_threshold)
    else:
        if not args.items:
            raise ValueError(
                f"dataset {args.dataset!r} is not built in ({', '.join(BUILTIN_DATASETS)}); "
                "for your own data pass --items ITEMS_FILE as well"
            )
        items = load_items(
            args.items,
            item_col=args.items_item_col,
            text_cols=[c.strip() for c in args.text_cols.split(",")],
        )
        data = load_interactions(
            args.dataset,
            items=items,
            user_col=args.user_col,
            item_col=args.item_col,
            time_col=args.time_col,
            outcome_col=args.outcome_col,
            rating_col=args.rating_col,
            like_threshold=args.like_threshold,
            unknown_items=args.unknown_items,
        )
    split = leave_one_out(data, min_length=args.min_length)
    return data, split


def embeddings_stage(
    run: RunDir, data: InteractionData, args: DataArguments
) -> tuple[np.ndarray, str]:
    source = args.embeddings or args.embedding_model
    key = fingerprint("embeddings", source, data.item_ids, data.item_texts)
    path = run.path / "embeddings.safetensors"
    if run.fresh("embeddings", key, path.name):
        vectors = load_item_embeddings(path, data.item_ids)
        log(f"embeddings: reused {path} ({vectors.shape[0]}×{vectors.shape[1]})")
        return vectors, key
    if args.embeddings:
        vectors = load_item_embeddings(args.embeddings, data.item_ids)
    else:
        vectors = embed_texts(data.item_texts, model=args.embedding_model)
    check_embeddings(vectors, expected_rows=data.num_items, source=source)
    save_embeddings(
        run.staging / path.name, vectors, item_ids=data.item_ids, metadata={"source": source}
    )
    run.mark("embeddings", key)
    log(f"embeddings: {vectors.shape[0]}×{vectors.shape[1]} from {source} → {path}")
    return vectors, key


def sid_stage(
    run: RunDir,
    data: InteractionData,
    vectors: np.ndarray,
    emb_key: str,
    args: SIDArguments,
    seed: int,
):
    """Fit (or reuse) the SID tokenizer and build unique semantic IDs."""
    from sid.codes import SemanticIDs, codebook_health
    from sid.tokenizers import build_sid_tokenizer, load_sid_tokenizer

    sizes = parse_sizes(args.codebook_sizes)
    options = {"kind": args.sid_tokenizer, "codebook_sizes": sizes, "seed": seed}
    if args.sid_tokenizer == "rqvae":
        options["epochs"] = args.sid_epochs
    key = fingerprint("tokenizer", emb_key, options)
    sid_key = fingerprint("semantic_ids", key, args.collision_policy)
    if run.fresh("tokenizer", key, "tokenizer/config.json") and run.fresh(
        "semantic_ids", sid_key, "semantic_ids.json"
    ):
        sids = SemanticIDs.load(run.path)
        log(f"semantic IDs: reused {run.path / 'semantic_ids.json'}")
        return load_sid_tokenizer(run.path / "tokenizer"), sids, sid_key, None
    kind = options.pop("kind")
    tokenizer = build_sid_tokenizer(kind, **options)
    start = time.perf_counter()
    tokenizer.fit(vectors)
    raw = tokenizer.encode(vectors)
    sids = SemanticIDs.from_codes(
        raw,
        data.item_ids,
        codebook_sizes=tokenizer.codebook_sizes,
        policy=args.collision_policy,
        distances=tokenizer.last_level_distances(vectors)
        if args.collision_policy == "reassign"
        else None,
    )
    health = codebook_health(
        raw,
        codebook_sizes=tokenizer.codebook_sizes,
        semantic_ids=sids,
        embeddings=vectors,
        tokenizer=tokenizer,
    )
    tokenizer.save_pretrained(run.staging / "tokenizer")
    run.mark("tokenizer", key)
    sids.save(run.staging)
    run.mark("semantic_ids", sid_key)
    log(
        f"SID tokenizer {kind} {sizes} fitted in {time.perf_counter() - start:.1f}s; "
        f"collision rate before {health.get('collision_rate_before', float('nan')):.3f}, "
        f"after {health.get('collision_rate_after', float('nan')):.3f}; final SID length "
        f"{sids.codes.shape[1]}"
    )
    return tokenizer, sids, sid_key, health


def prefixmem_stage(
    run: RunDir, sids, vectors: np.ndarray, sid_key: str, args: ModelArguments, seed: int
):
    """A PrefixMem to attach to the LM (fresh, pre-trained or loaded); None when not asked for."""
    if not (args.prefixmem or args.prefixmem_pretrain or args.prefixmem_path):
        return None, None
    from prefixmem import PrefixMem, PrefixMemConfig
    from sid.model import base_hidden_size

    if args.prefixmem_path:
        pm = PrefixMem.from_pretrained(args.prefixmem_path)
        if list(pm.config.codebook_sizes) != list(sids.codebook_sizes):
            raise ValueError(
                f"PrefixMem {args.prefixmem_path} was built for SID codebook sizes "
                f"{pm.config.codebook_sizes}, this run's SIDs have {list(sids.codebook_sizes)}"
            )
        log(f"PrefixMem: loaded {args.prefixmem_path} ({pm.num_parameters():,} parameters)")
        return pm, fingerprint("prefixmem", "path", str(Path(args.prefixmem_path).resolve()))
    hidden_size = base_hidden_size(args.model, trust_remote_code=args.trust_remote_code)
    options = {
        "table_size": args.prefixmem_table_size,
        "head_dim": args.prefixmem_head_dim,
        "pretrain_steps": args.prefixmem_steps if args.prefixmem_pretrain else 0,
    }
    key = fingerprint("prefixmem", sid_key, options, seed, hidden_size)
    if run.fresh("prefixmem", key, "prefixmem_init/config.json"):
        log(f"PrefixMem: reused {run.path / 'prefixmem_init'}")
        return PrefixMem.from_pretrained(run.path / "prefixmem_init"), key
    torch.manual_seed(seed)
    pm = PrefixMem(
        PrefixMemConfig(
            codebook_sizes=list(sids.codebook_sizes),
            hidden_size=hidden_size,
            table_size=args.prefixmem_table_size,
            head_dim=args.prefixmem_head_dim,
        )
    )
    if args.prefixmem_pretrain:
        from prefixmem.pretrain import pretrain_prefixmem

        metrics = pretrain_prefixmem(
            pm, sids, torch.as_tensor(vectors), steps=args.prefixmem_steps, seed=seed
        )
        log(f"PrefixMem: pre-trained: {dumps_strict(metrics)}")
    pm.save_pretrained(run.staging / "prefixmem_init")
    run.mark("prefixmem", key)
    log(f"PrefixMem: {pm.num_parameters():,} parameters, attached to the LM's input embeddings")
    return pm, key


def check_compatible_run(run: RunDir, sids, overwrite: bool) -> None:
    """Refuse to continue a run whose trained model speaks another SID vocabulary.

    Nothing is deleted here: with `overwrite` the new model replaces the old one when the run
    commits, and until then the run directory keeps the old, consistent model and SIDs.
    """
    vocab_file = run.path / "model" / "sid_vocab.json"
    if not vocab_file.exists():
        return
    try:
        saved = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{vocab_file} is corrupt ({err}); pass --overwrite to replace it"
        ) from err
    if list(saved.get("codebook_sizes", [])) != list(sids.codebook_sizes):
        if overwrite:
            return
        raise ValueError(
            f"run directory {run.path} holds a model trained on SIDs with codebook sizes "
            f"{saved.get('codebook_sizes')}, but this run's SID tokenizer gives "
            f"{list(sids.codebook_sizes)}; pass --overwrite to replace it or choose another --run_dir"
        )


def model_stage(
    run: RunDir,
    split: LeaveOneOutSplit,
    sids,
    sid_key: str,
    prefixmem,
    pm_key,
    margs: ModelArguments,
    rargs: RunArguments,
):
    from sid.model import SIDRecModel
    from sid.training import (
        build_eval_examples,
        build_train_windows,
        make_trainer,
        make_training_arguments,
        tokens_per_epoch,
    )

    train_options = {
        k: v
        for k, v in asdict(rargs).items()
        # options that do not change the trained weights do not invalidate the model
        if k
        not in (
            "run_dir",
            "preset",
            "resume",
            "overwrite",
            "threads",
            "eval_users",
            "eval_steps",
            "logging_steps",
            "save_steps",
        )
    }
    key = fingerprint(
        "model",
        sid_key,
        pm_key,
        margs.model,
        margs.max_items,
        margs.stride,
        margs.outcome_loss,
        train_options,
        *((("dense", margs.dense_weight),) if margs.dense else ()),
    )
    check_compatible_run(run, sids, rargs.overwrite)
    if run.fresh("model", key, "model/sid_vocab.json"):
        log(f"model: reused {run.path / 'model'}")
        return SIDRecModel.from_pretrained(run.path), None, key
    checkpoints = run.path / "checkpoints"
    found = sorted(checkpoints.glob("checkpoint-*")) if checkpoints.exists() else []
    same_options = run.stages.get("model_started") == key
    if rargs.resume and found and not same_options:
        raise ValueError(
            f"--resume: the checkpoints in {checkpoints} were written by a run with other "
            "options (data, SIDs, model or training); resume with the same options, or drop "
            "--resume to start again"
        )
    if rargs.resume and not found:
        log(f"--resume: no checkpoint in {checkpoints}; training starts from step 0")
    if rargs.resume and found:
        from sid.artifacts import check_weights_folder

        newest = max(
            found,
            key=lambda p: (
                int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1
            ),
        )
        check_weights_folder(newest, what="checkpoint")  # a truncated one fails in one line
        log(f"--resume: continuing from {newest}")
    if checkpoints.exists() and not rargs.resume and not same_options:
        shutil.rmtree(checkpoints)  # checkpoints of another configuration
    rec = SIDRecModel.build(
        margs.model, sids, split.data.outcome_labels, trust_remote_code=margs.trust_remote_code
    )
    if prefixmem is not None:
        prefixmem.attach(rec.lm, rec.vocab)
        rec.prefixmem = prefixmem
    if margs.dense:
        from sid.dense import DenseConfig, DenseRetrieval

        hidden = int(rec.lm.config.get_text_config().hidden_size)
        rec.dense = DenseRetrieval(DenseConfig(num_items=len(sids), hidden_size=hidden))
        rec.dense.attach(rec.lm, rec.vocab, sids)
    train = build_train_windows(
        split,
        sids,
        rec.vocab,
        max_items=margs.max_items,
        stride=margs.stride,
        outcome_loss=margs.outcome_loss,
    )
    valid = build_eval_examples(split, sids, rec.vocab, max_items=margs.max_items, which="valid")
    if rargs.eval_users:
        valid = {k: v[: rargs.eval_users] for k, v in valid.items()}
    n_params = sum(p.numel() for p in rec.lm.parameters())
    log(
        f"model {margs.model}: {n_params / 1e6:.2f}M parameters; {len(train['input_ids'])} "
        f"training windows, {tokens_per_epoch(train):,} tokens per epoch"
    )
    targs = make_training_arguments(
        checkpoints,
        epochs=rargs.epochs,
        max_steps=rargs.max_steps,
        batch_size=rargs.batch_size,
        grad_accum=rargs.grad_accum,
        lr=rargs.lr,
        warmup_ratio=rargs.warmup,
        weight_decay=rargs.weight_decay,
        save_steps=rargs.save_steps,
        eval_steps=rargs.eval_steps,
        logging_steps=rargs.logging_steps,
        seed=rargs.seed,
        precision=rargs.precision,
    )
    trainer = make_trainer(
        rec.lm, train, valid, targs, rec.tokenizer.pad_token_id, dense_weight=margs.dense_weight
    )
    run.mark_now("model_started", key)
    resume = rargs.resume and bool(found)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    # Throughput of training proper: the validation passes inside train() are taken out.
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    tokens_seen = tokens_per_epoch(train) * float(trainer.state.epoch or 0.0)
    if resume:
        tokens_seen = float("nan")  # part of the epochs ran in an earlier process
    stats = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "train_tokens_per_second": round(tokens_seen / max(1e-9, seconds - eval_seconds), 1),
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    if trainer.is_world_process_zero():
        rec.lm.eval()
        rec.save_pretrained(run.staging, fingerprint=key)
        run.mark("model", key)
    log(f"model trained: {dumps_strict(stats)}")
    return rec, stats, key


def run_training(
    dargs: DataArguments, sargs: SIDArguments, margs: ModelArguments, rargs: RunArguments
) -> Path:
    """Every stage of train.py; returns the run directory.

    The run is one transaction: stages write into the run's staging folder and the run
    directory changes only when every stage has finished (see `RunDir.commit`). Options, the
    model name and the codebook's capacity are checked before any long work starts.
    """
    validate_arguments(dargs, sargs, margs, rargs)
    from sid.model import resolve_model_source

    resolve_model_source(margs.model, trust_remote_code=margs.trust_remote_code)
    if rargs.threads:
        torch.set_num_threads(rargs.threads)
    torch.manual_seed(rargs.seed)
    start = time.perf_counter()
    data, split = load_data(dargs)
    check_codebook_capacity(parse_sizes(sargs.codebook_sizes), data.num_items, sargs)
    run = RunDir(rargs.run_dir)
    try:
        log(f"data {data.name}:\n{format_summary({**data.summary(), **split.summary()})}")
        vectors, emb_key = embeddings_stage(run, data, dargs)
        _, sids, sid_key, health = sid_stage(run, data, vectors, emb_key, sargs, rargs.seed)
        prefixmem, pm_key = prefixmem_stage(run, sids, vectors, sid_key, margs, rargs.seed)
        rec, train_stats, model_key = model_stage(
            run, split, sids, sid_key, prefixmem, pm_key, margs, rargs
        )
        if int(os.environ.get("RANK", "0")) != 0:
            run.discard()  # under accelerate/torchrun the main process commits the run
            return run.path
        ranker_stats = (
            ranker_stage(run, rec, split, model_key, margs, rargs) if margs.ranker else None
        )
        old = {}
        if (run.path / "config.json").exists():
            try:
                old = json.loads((run.path / "config.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = {}  # rewritten whole below
        config = {
            "data": asdict(dargs),
            "sid": asdict(sargs),
            "model": asdict(margs),
            "run": asdict(rargs),
            "summary": {**data.summary(), **split.summary()},
            "stages": {**run.stages, **run.pending},
            "codebook_health": health if health is not None else old.get("codebook_health"),
            "training": train_stats if train_stats is not None else old.get("training"),
            "ranker": ranker_stats if ranker_stats is not None else old.get("ranker"),
        }
        write_json_atomic(run.staging / "config.json", config)
        new_model = "model" in run.pending
        remove = ()
        if new_model:
            # artifacts of the model being replaced that this run did not rebuild
            remove = tuple(
                n for n in ("prefixmem", "dense", "ranker") if not (run.staging / n).exists()
            )
        run.commit(remove=remove)
    except BaseException:
        run.discard()
        raise
    log(f"done in {time.perf_counter() - start:.0f}s; run directory: {run.path}")
    return run.path


# --------------------------------------------------------------------------------------------
# Checks that run before any long work


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def validate_arguments(
    dargs: DataArguments, sargs: SIDArguments, margs: ModelArguments, rargs: RunArguments
) -> None:
    """Refuse out-of-range options with the option, its value and what is allowed."""
    from sid.tokenizers import TOKENIZERS

    def need(ok: bool, option: str, value, allowed: str) -> None:
        if not ok:
            raise ValueError(f"--{option} {value!r} is not allowed: {allowed}")

    need(
        isinstance(rargs.epochs, (int, float)) and math.isfinite(rargs.epochs) and rargs.epochs > 0,
        "epochs",
        rargs.epochs,
        "it must be a number > 0 (use --max_steps to stop early)",
    )
    need(rargs.max_steps == -1 or rargs.max_steps > 0, "max_steps", rargs.max_steps, "-1 or > 0")
    need(math.isfinite(rargs.lr) and rargs.lr > 0, "lr", rargs.lr, "it must be > 0")
    need(0 <= rargs.warmup < 1, "warmup", rargs.warmup, "a share of the steps in [0, 1)")
    smallest = {  # option: (value, smallest allowed value)
        "batch_size": (rargs.batch_size, 1),
        "grad_accum": (rargs.grad_accum, 1),
        "weight_decay": (rargs.weight_decay, 0),
        "save_steps": (rargs.save_steps, 1),
        "eval_steps": (rargs.eval_steps, 1),
        "logging_steps": (rargs.logging_steps, 1),
        "eval_users": (rargs.eval_users, 0),
        "threads": (rargs.threads, 0),
        "sid_epochs": (sargs.sid_epochs, 1),
        "max_items": (margs.max_items, 2),
        "prefixmem_steps": (margs.prefixmem_steps, 1),
        "prefixmem_table_size": (margs.prefixmem_table_size, 2),
        "prefixmem_head_dim": (margs.prefixmem_head_dim, 1),
        "ranker_steps": (margs.ranker_steps, 1),
        "ranker_beam_negatives": (margs.ranker_beam_negatives, 0),
        "ranker_random_negatives": (margs.ranker_random_negatives, 0),
        "dense_weight": (margs.dense_weight, 0),
        "min_length": (dargs.min_length, 3),
    }
    for option, (value, low) in smallest.items():
        need(value >= low, option, value, f"it must be >= {low}")
    choices = {  # option: (value, allowed values)
        "precision": (rargs.precision, PRECISIONS),
        "sid_tokenizer": (sargs.sid_tokenizer, tuple(sorted(TOKENIZERS))),
        "collision_policy": (sargs.collision_policy, ("suffix", "reassign")),
        "unknown_items": (dargs.unknown_items, ("error", "drop")),
    }
    for option, (value, allowed) in choices.items():
        need(value in allowed, option, value, f"choose one of {', '.join(allowed)}")
    if rargs.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise ValueError(
            f"--precision {rargs.precision} needs a CUDA GPU and none is available; "
            "use --precision auto or fp32"
        )
    if rargs.preset is not None and rargs.preset not in PRESETS:
        raise ValueError(f"unknown preset {rargs.preset!r}; choose one of {', '.join(PRESETS)}")
    sizes = parse_sizes(sargs.codebook_sizes)
    need(min(sizes) >= 2, "codebook_sizes", sargs.codebook_sizes, "every size must be >= 2")
    if margs.ranker and margs.ranker_features:
        need(
            margs.ranker_beam_negatives >= 2,
            "ranker_beam_negatives",
            margs.ranker_beam_negatives,
            "the head fed the beam log-prob trains on beam lists this long: it must be >= 2",
        )
    if margs.stride is not None:
        need(
            1 <= margs.stride <= margs.max_items,
            "stride",
            margs.stride,
            f"1 to --max_items ({margs.max_items})",
        )
    need(
        math.isfinite(dargs.like_threshold),
        "like_threshold",
        dargs.like_threshold,
        "a finite number",
    )
    if margs.prefixmem_path and not Path(margs.prefixmem_path, "config.json").is_file():
        raise FileNotFoundError(
            f"--prefixmem_path {margs.prefixmem_path}: no PrefixMem there (config.json missing)"
        )
    if dargs.embeddings and not Path(dargs.embeddings).exists():
        raise FileNotFoundError(f"--embeddings {dargs.embeddings}: file not found")


# A code space this many times larger than the catalogue still collides often (RQ codes are
# far from uniform); below it the run goes on with a loud warning.
CAPACITY_WARN_FACTOR = 4


def check_codebook_capacity(sizes: list[int], n_items: int, sargs: SIDArguments) -> None:
    """Refuse codebooks that cannot tell the catalogue's items apart; warn when barely able.

    prod(sizes) < n_items means the base SID levels cannot give every item its own SID, so the
    collision level (or reassignment) would carry the identity of most items: refused. Fewer
    than `CAPACITY_WARN_FACTOR` codes per item: a warning that names the collision risk.
    """
    from sid.tokenizers.base import check_enough_items

    capacity = math.prod(sizes)
    if capacity < n_items:
        # the smallest equal sizes, same number of levels, that clear the warning threshold
        size = math.ceil((CAPACITY_WARN_FACTOR * n_items) ** (1 / len(sizes)))
        raise ValueError(
            f"--codebook_sizes {sargs.codebook_sizes} give {capacity:,} distinct SIDs for a "
            f"catalogue of {n_items:,} items: far too small to tell items apart. Use larger "
            f"codebooks or another level (e.g. --codebook_sizes {','.join([str(size)] * len(sizes))})"
        )
    check_enough_items(n_items, sizes)
    if capacity < CAPACITY_WARN_FACTOR * n_items:
        warnings.warn(
            f"--codebook_sizes {sargs.codebook_sizes} give only {capacity:,} distinct SIDs for "
            f"{n_items:,} items ({capacity / n_items:.1f} per item): expect many items to share "
            "a base SID and be told apart only by the collision level",
            UserWarning,
            stacklevel=2,
        )
        log(
            f"WARNING: codebook sizes {sizes} give only {capacity:,} SIDs for {n_items:,} "
            "items; expect many collisions"
        )


def ranker_stage(
    run: RunDir,
    rec,
    split: LeaveOneOutSplit,
    model_key: str,
    margs: ModelArguments,
    rargs: RunArguments,
) -> dict | None:
    """Train the cross-attention ranking head on train-split data with the LM frozen."""
    from sid.ranking import RankingHead, RankingHeadConfig, train_ranker

    key = fingerprint(
        "ranker",
        model_key,
        margs.ranker_steps,
        margs.ranker_beam_negatives,
        margs.ranker_random_negatives,
        margs.ranker_features,
        rargs.seed,
    )
    if run.fresh("ranker", key, "ranker/config.json"):
        log(f"ranking head: reused {run.path / 'ranker'}")
        return None
    torch.manual_seed(rargs.seed)
    head = RankingHead(
        RankingHeadConfig(
            hidden_size=int(rec.lm.config.get_text_config().hidden_size),
            num_levels=rec.vocab.num_levels,
            outcomes=list(rec.vocab.outcomes),
            score_features=1 if margs.ranker_features else 0,
        )
    )
    rec.lm.eval()
    # beams under the outcome eval.py serves by default: the most frequent train outcome
    counts = np.bincount(split.train_outcomes, minlength=len(split.data.outcome_labels))
    stats = train_ranker(
        head,
        rec.lm,
        rec.vocab,
        rec.sids,
        split,
        steps=margs.ranker_steps,
        seed=rargs.seed,
        max_history=margs.max_items,
        n_beam_negatives=margs.ranker_beam_negatives,
        n_random_negatives=0 if margs.ranker_features else margs.ranker_random_negatives,
        beam_outcome=split.data.outcome_labels[int(counts.argmax())],
    )
    head.save_pretrained(run.staging / "ranker")
    # which model the head was trained on: eval refuses a head that belongs to another model
    write_json_atomic(run.staging / "ranker" / RANKER_BINDING, {"model_fingerprint": model_key})
    run.mark("ranker", key)
    summary = {k: v for k, v in stats.items() if k != "losses"}
    log(f"ranking head trained: {dumps_strict(summary)}")
    return summary


def arguments_from_dict(values: dict):
    """Build the four argument dataclasses from one flat dict (tests, notebooks)."""
    out = []
    for cls in ARGUMENT_CLASSES:
        names = {f.name for f in fields(cls)}
        out.append(cls(**{k: v for k, v in values.items() if k in names}))
    unknown = set(values) - {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    return tuple(out)
