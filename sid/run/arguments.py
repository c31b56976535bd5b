"""train.py's and eval.py's options as dataclasses for `HfArgumentParser`, the presets, and the
checks that refuse out-of-range options before any long work starts.

Every default lives here or in the library function the option is passed to (see
`library_default`), never in two places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from sid.data import BUILTIN_DATASETS

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
