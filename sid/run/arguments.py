"""train.py's and eval.py's options as dataclasses for `HfArgumentParser`, the presets, and the
checks that refuse out-of-range options before any long work starts.

Every default lives here or in the library function the option is passed to (see
`library_default`), never in two places.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from prefixmem.memory import PrefixMemConfig
from sid.codes import SemanticIDs
from sid.data import BUILTIN_DATASETS, leave_one_out, load_data
from sid.embed import embed_texts
from sid.evaluation import evaluate_run
from sid.ranking_training import train_ranker
from sid.tokenizers.rqvae import RQVAE
from sid.training import (
    SIDTrainingArguments,
    build_train_windows,
    make_trainer,
    resolve_aliases,
)
from sid.vocab import SIDVocab


def library_default(owner, name: str):
    """The default of parameter `name` of function or class `owner` (or of a dataclass field):
    an option passed straight to the library takes its default from there, so that each
    default lives in one place."""
    if dataclasses.is_dataclass(owner):
        for f in fields(owner):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                break
        raise KeyError(f"{owner.__name__}.{name} has no plain default")
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{owner.__qualname__}({name}=...) has no default")
    return default


# --------------------------------------------------------------------------------------------
# Arguments (parsed by HfArgumentParser in train.py; every field's help is shown by --help)


@dataclass
class DataArguments:
    _argument_group_name = "data"

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
    user_col: str = field(
        default=library_default(load_data, "user_col"),
        metadata={"help": "Interactions: user id column."},
    )
    item_col: str = field(
        default=library_default(load_data, "item_col"),
        metadata={"help": "Interactions: item id column."},
    )
    items_item_col: str = field(
        default=library_default(load_data, "items_item_col"),
        metadata={"help": "Items: item id column."},
    )
    time_col: str = field(
        default=library_default(load_data, "time_col"),
        metadata={"help": "Interactions: time column."},
    )
    outcome_col: str | None = field(
        default=None, metadata={"help": "Interactions: outcome label column (click/save/…)."}
    )
    rating_col: str | None = field(
        default=None,
        metadata={"help": "Interactions: rating column; outcome = like if >= --like_threshold."},
    )
    text_cols: str = field(
        default=library_default(load_data, "text_cols"),
        metadata={"help": "Items: comma-separated text columns, joined by ' | '."},
    )
    like_threshold: float = field(
        default=library_default(load_data, "like_threshold"),
        metadata={"help": "Rating >= this is 'like'."},
    )
    unknown_items: str = field(
        default=library_default(load_data, "unknown_items"),
        metadata={"help": "Interactions naming items absent from the items file: error | drop."},
    )
    min_length: int | None = field(
        default=library_default(leave_one_out, "min_length"),
        metadata={
            "help": "Users with fewer interactions are dropped (None: 2 x --holdout + 1, the "
            "least, i.e. 3 for leave-one-out)."
        },
    )
    holdout: int = field(
        default=library_default(leave_one_out, "holdout"),
        metadata={
            "help": "Interactions held out per user: the last W test, the W before them "
            "validate (1: leave-one-out; W > 1: the future-window protocol of eval.py)."
        },
    )
    embeddings: str | None = field(
        default=None,
        metadata={"help": "Precomputed item embeddings (.npy/.safetensors/.parquet) to use."},
    )
    embedding_model: str = field(
        default=library_default(embed_texts, "model"),
        metadata={"help": "Sentence encoder: the offline MiniLM alias, a folder or a hub id."},
    )


@dataclass
class SIDArguments:
    _argument_group_name = "semantic IDs"

    sid_tokenizer: str = field(default="rqvae", metadata={"help": "rqvae | rqkmeans."})
    codebook_sizes: str = field(
        default="auto",
        metadata={
            "help": "Codes per level, comma-separated (e.g. 256,256,256), or auto: three levels "
            "of the largest power of two <= min(256, items / 2)."
        },
    )
    collision_policy: str = field(
        default=library_default(SemanticIDs.from_codes, "policy"),
        metadata={"help": "suffix (extra level) | reassign (nearest free code)."},
    )
    sid_epochs: int = field(
        default=library_default(RQVAE, "epochs"), metadata={"help": "RQ-VAE training epochs."}
    )
    sid_fit_sample: int = field(
        default=0,
        metadata={
            "help": "Fit the SID tokenizer on this many items drawn at random (seeded), then "
            "encode every item; 0: fit on all. For catalogues of 10^5+ items "
            "(BENCHMARKS.md, Scale)."
        },
    )


@dataclass
class ModelArguments:
    _argument_group_name = "model"

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
    tiny_config: str = field(
        default="",
        metadata={
            "help": "With --model tiny: a JSON object of LlamaConfig settings (width, depth, "
            'heads…), e.g. {"hidden_size": 256, "num_hidden_layers": 4}; the default tiny '
            "model is 128 wide with 2 layers and 4 heads."
        },
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
        default=library_default(PrefixMemConfig, "table_size"),
        metadata={"help": "PrefixMem: largest directly indexed / hashed table."},
    )
    prefixmem_head_dim: int = field(
        default=library_default(PrefixMemConfig, "head_dim"),
        metadata={"help": "PrefixMem: width of a row."},
    )
    ranker: bool = field(
        default=False, metadata={"help": "Train the cross-attention ranking head after the LM."}
    )
    ranker_steps: int = field(
        default=library_default(train_ranker, "steps"),
        metadata={"help": "Ranking head training steps."},
    )
    ranker_lr: float = field(
        default=library_default(train_ranker, "lr"),
        metadata={"help": "Ranking head: AdamW learning rate."},
    )
    ranker_beam_negatives: int = field(
        default=library_default(train_ranker, "n_beam_negatives"),
        metadata={"help": "Ranking head: beam-search negatives per example."},
    )
    ranker_random_negatives: int = field(
        default=library_default(train_ranker, "n_random_negatives"),
        metadata={"help": "Ranking head: random catalogue negatives (with --ranker_features 0)."},
    )
    ranker_features: bool = field(
        default=True,
        metadata={
            "help": "Ranking head reads each candidate's beam log-prob and trains on the beam's "
            "own lists (--ranker_beam_negatives long); False: the older head without it."
        },
    )
    ranker_dense_feature: bool = field(
        default=False,
        metadata={
            "help": "Ranking head also reads each candidate's dense log-prob (needs --dense "
            "and --ranker_features); served with one outcome and one slot per user."
        },
    )
    ranker_targets: str = field(
        default="train",
        metadata={
            "help": "Ranking head examples: train (every next item of the train sequences) | "
            "valid (each user's validation target after the whole train sequence, as a test "
            "target comes; the first --ranker_tune_users users are left out to pick weights)."
        },
    )
    ranker_tune_users: int = field(
        default=2000,
        metadata={
            "help": "Ranking head: the first N users, whose validation lists pick its best step "
            "(--ranker_eval_every); with --ranker_targets valid also left out of its training."
        },
    )
    ranker_eval_every: int = field(
        default=library_default(train_ranker, "eval_every"),
        metadata={
            "help": "Ranking head: rank the tuning users' validation beam lists before training "
            "and every N steps, and keep the best step (0: keep the last step)."
        },
    )
    ranker_prior_weight: float = field(
        default=library_default(train_ranker, "prior_weight"),
        metadata={
            "help": "Ranking head: the dense prior's weight in the beam that makes its lists "
            "(serve with the same --prior_weight)."
        },
    )
    ranker_list_loss: float = field(
        default=library_default(train_ranker, "list_loss_weight"),
        metadata={
            "help": "Ranking head on beam lists: weight of the listwise loss (the served score's "
            "softmax over the list at the positive) beside the per-candidate one; 0: off."
        },
    )
    ranker_exclude_history: bool = field(
        default=library_default(train_ranker, "exclude_history"),
        metadata={"help": "Ranking head: its beam lists leave the history out, as served."},
    )
    dense: bool = field(
        default=False,
        metadata={
            "help": "Per-item ID embeddings + a dense retrieval head (dot product over item "
            "vectors, full-softmax loss with the LM's); eval merges its top items with the beam."
        },
    )
    dense_weight: float = field(
        default=library_default(make_trainer, "dense_weight"),
        metadata={"help": "Weight of the dense head's loss beside the LM loss."},
    )
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout while training the LM, where SASRec has it: on the hidden "
            "states entering the first layer and on every attention and MLP block's output "
            "(sid.model.add_dropout). 0: the LM as it is."
        },
    )
    dense_negatives: int = field(
        default=library_default(make_trainer, "dense_negatives"),
        metadata={
            "help": "0: the dense head trains with a full softmax over the catalogue; K > 0: a "
            "sampled softmax over K uniform negatives per batch (memory and time independent "
            "of the catalogue: for 10^5+ items)."
        },
    )
    target_window: int = field(
        default=library_default(build_train_windows, "target_window"),
        metadata={
            "help": "Future-window training: at each item the loss rewards any of the next W "
            "train items of the same outcome (the LM over their SIDs, the dense head as a "
            "multi-positive softmax); 1: the next item only."
        },
    )
    target_window_seconds: float | None = field(
        default=library_default(build_train_windows, "target_window_seconds"),
        metadata={
            "help": "With --target_window: only items at most this many seconds after the "
            "item count (None: no time limit)."
        },
    )
    slots: int = field(
        default=library_default(SIDVocab, "slots"),
        metadata={
            "help": "Query slots per decoding step (PinRec's multi-token generation): k > 1 adds "
            "<next_2> … <next_k>; slot j is trained on the item j - 1 places after the next "
            "one, and eval/serving decodes every slot from one history encoding and merges "
            "their lists. 1: the next item only."
        },
    )
    slot_anchors: int = field(
        default=library_default(make_trainer, "slot_anchors"),
        metadata={
            "help": "With --slots: items per training example and slot that get a slot "
            "segment, drawn afresh every batch."
        },
    )
    outcome_conditioning: bool = field(
        default=library_default(SIDVocab, "conditioned"),
        metadata={
            "help": "False: every outcome is written as the one token <any>, so the model "
            "never reads what the user did with an item (and a future window takes the next "
            "items whatever their outcome): the unconditioned baseline."
        },
    )


@dataclass
class RunArguments:
    _argument_group_name = "run"

    run_dir: str = field(default="runs/quickstart", metadata={"help": "Run directory."})
    preset: str | None = field(
        default=None,
        metadata={"help": "quickstart | ml1m | smollm2: a set of defaults; flags still override."},
    )
    eval_users: int = field(
        default=0, metadata={"help": "Validate on the first N users only (0: all users)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest checkpoint in the run."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a run directory built from other SIDs."}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)."})


# train.py's options: the toolkit's four groups, then every option of Hugging Face's
# `TrainingArguments` (with the toolkit's defaults) under its own name.
ARGUMENT_CLASSES = (DataArguments, SIDArguments, ModelArguments, RunArguments, SIDTrainingArguments)


@dataclass
class EvalArguments:
    """eval.py's options; the defaults are `sid.evaluation.evaluate_run`'s."""

    run_dir: str | None = field(
        default=None,
        metadata={
            "help": "Run directory written by train.py (may be given as the first argument)."
        },
    )
    split: Literal["test", "valid"] = field(
        default=library_default(evaluate_run, "split_name"),
        metadata={"help": "Targets: test (each user's last item) or valid (second to last)."},
    )
    num_beams: int = field(
        default=library_default(evaluate_run, "num_beams"), metadata={"help": "Beams per user."}
    )
    top_k: int = field(
        default=library_default(evaluate_run, "top_k"), metadata={"help": "Candidates per user."}
    )
    batch_size: int = field(
        default=library_default(evaluate_run, "batch_size"), metadata={"help": "Users per batch."}
    )
    outcome: str | None = field(
        default=library_default(evaluate_run, "outcome"),
        metadata={
            "help": "Outcome to condition on (None: the most frequent train outcome), or a "
            "budget of candidates per outcome such as like:15,watch:5 (summing to --top_k)."
        },
    )
    protocol: Literal["next", "window"] = field(
        default=library_default(evaluate_run, "protocol"),
        metadata={
            "help": "next: the next item after the history; window: the held-out future window "
            "of a run trained with --holdout W (hit/recall/NDCG against the window)."
        },
    )
    window: int | None = field(
        default=library_default(evaluate_run, "window"),
        metadata={"help": "--protocol window: score the first N held-out items (None: all W)."},
    )
    slots: int | None = field(
        default=library_default(evaluate_run, "slots"),
        metadata={
            "help": "Query slots to decode for a run trained with --slots k (None: all k; 1: "
            "the next-item slot alone)."
        },
    )
    keep_history: bool = field(
        default=not library_default(evaluate_run, "exclude_history"),
        metadata={
            "help": "Keep items already in the user's history as candidates (the headline "
            "protocol excludes them)."
        },
    )
    max_users: int | None = field(
        default=library_default(evaluate_run, "max_users"),
        metadata={"help": "Evaluate only the first N users (None: all)."},
    )
    rerank: bool = field(
        default=library_default(evaluate_run, "rerank"),
        metadata={"help": "Rescore the beam's candidates with the ranking head, if trained."},
    )
    beam_weight: float = field(
        default=library_default(evaluate_run, "beam_weight"),
        metadata={
            "help": "Share of the (renormalised) beam probability in the ranked score, 0..1."
        },
    )
    prior_weight: float = field(
        default=library_default(evaluate_run, "prior_weight"),
        metadata={
            "help": "Runs with a dense head: weight of the dense head's item log-probs inside "
            "the beam search, at every SID level (0: the SID log-probs alone)."
        },
    )
    dense_beam_weight: float = field(
        default=library_default(evaluate_run, "dense_beam_weight"),
        metadata={"help": "Runs with a dense head: share of the beam log-prob in dense + beam."},
    )
    device: str | None = field(
        default=library_default(evaluate_run, "device"),
        metadata={"help": "cpu, cuda, cuda:1 … (None: cpu)."},
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)."})
    compare: list[str] | None = field(
        default=None,
        metadata={"help": "Put the saved reports of these run directories side by side."},
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""

    def _get_help_string(self, action):
        if (action.help or "").startswith("Same as --"):
            return action.help  # the --no_X twin of a boolean: its "default" would mislead
        return super()._get_help_string(action)


def make_parser(dataclass_types, description: str | None = None) -> HfArgumentParser:
    """`HfArgumentParser` over `dataclass_types` whose --help shows each default and reads
    booleans as `--flag True|False` (a bare `--flag` means True; `--no_flag` for a flag that
    defaults to True)."""
    parser = HfArgumentParser(
        dataclass_types, description=description, formatter_class=_HelpFormatter
    )
    for action in parser._actions:
        if action.type is string_to_bool:
            action.metavar = "True|False"
        elif action.option_strings and all(
            o.startswith(("--no_", "--no-")) for o in action.option_strings
        ):
            action.help = f"Same as --{action.dest} False."
    return parser


PRESETS: dict[str, dict] = {
    # MovieLens-100K + MiniLM + RQ-VAE + tiny model: the README's quick start, minutes on CPU.
    "quickstart": dict(
        dataset="movielens-100k",
        sid_tokenizer="rqvae",
        codebook_sizes="64,64,64",
        model="tiny",
        max_items=20,
        num_train_epochs=2.0,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
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
        num_train_epochs=4.0,
        per_device_train_batch_size=32,
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
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        save_steps=10,
        eval_steps=10,
        eval_users=64,
        logging_steps=5,
        run_dir="runs/smollm2",
    ),
}
# The `ml1m` recipe trained 10 epochs with label smoothing 0.1 on the LM loss (every row up over
# two seeds, BENCHMARKS.md); validation loss is checked every 500 steps and the best step's
# weights are kept (picked on validation, never on test).
PRESETS["ml1m-large"] = {
    **PRESETS["ml1m"],
    "num_train_epochs": 10.0,
    "label_smoothing_factor": 0.1,
    "eval_strategy": "steps",
    "load_best_model_at_end": True,
    "metric_for_best_model": "eval_loss",
    "run_dir": "runs/ml1m-large",
}


AUTO_LEVELS, AUTO_MAX_SIZE = 3, 256


def parse_sizes(text: str, *, num_items: int | None = None) -> list[int]:
    """`--codebook_sizes` → codes per level. "auto" (needs `num_items`): three levels of the
    largest power of two <= min(256, num_items / 2), so every level has items to spare for
    k-means and small catalogues get small codebooks."""
    if str(text).strip() == "auto":
        if num_items is None:
            return [AUTO_MAX_SIZE] * AUTO_LEVELS  # the size a large catalogue gets
        size = 2 ** max(1, int(math.log2(max(4, min(AUTO_MAX_SIZE, num_items // 2)))))
        return [size] * AUTO_LEVELS
    try:
        sizes = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--codebook_sizes must be comma-separated integers (e.g. 256,256,256) or auto, "
            f"got {text!r}"
        ) from None
    if not sizes:
        raise ValueError("--codebook_sizes is empty; pass e.g. 256,256,256 or auto")
    return sizes


# --------------------------------------------------------------------------------------------
# Checks that run before any long work


def validate_arguments(
    dargs: DataArguments,
    sargs: SIDArguments,
    margs: ModelArguments,
    rargs: RunArguments,
    targs: SIDTrainingArguments,
) -> None:
    """Refuse out-of-range options with the option, its value and what is allowed."""
    from sid.tokenizers import TOKENIZERS

    def need(ok: bool, option: str, value, allowed: str) -> None:
        if not ok:
            raise ValueError(f"--{option} {value!r} is not allowed: {allowed}")

    epochs = targs.num_train_epochs
    need(
        isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0,
        "num_train_epochs",
        epochs,
        "it must be a number > 0 (use --max_steps to stop early)",
    )
    need(targs.max_steps == -1 or targs.max_steps > 0, "max_steps", targs.max_steps, "-1 or > 0")
    if margs.tiny_config:
        from sid.model import TINY_MODEL, tiny_overrides

        need(margs.model == TINY_MODEL, "tiny_config", margs.tiny_config, "only with --model tiny")
        tiny_overrides(margs.tiny_config)  # a bad setting fails here, naming itself
    seconds = margs.target_window_seconds
    need(
        seconds is None or (math.isfinite(seconds) and seconds >= 0),
        "target_window_seconds",
        seconds,
        "it must be >= 0 seconds (or left out for no time limit)",
    )
    need(
        math.isfinite(margs.dropout) and 0 <= margs.dropout < 1,
        "dropout",
        margs.dropout,
        "it must be in [0, 1)",
    )
    need(
        math.isfinite(targs.learning_rate) and targs.learning_rate > 0,
        "learning_rate",
        targs.learning_rate,
        "it must be > 0",
    )
    need(
        targs.warmup_steps >= 0
        and (targs.warmup_steps < 1 or targs.warmup_steps == int(targs.warmup_steps)),
        "warmup_steps",
        targs.warmup_steps,
        "a share of the steps in [0, 1), or a whole number of steps",
    )
    smallest = {  # option: (value, smallest allowed value)
        "per_device_train_batch_size": (targs.per_device_train_batch_size, 1),
        "gradient_accumulation_steps": (targs.gradient_accumulation_steps, 1),
        "weight_decay": (targs.weight_decay, 0),
        "save_steps": (targs.save_steps, 1e-9),
        "eval_steps": (targs.eval_steps or 1, 1e-9),
        "logging_steps": (targs.logging_steps, 1e-9),
        "eval_users": (rargs.eval_users, 0),
        "threads": (rargs.threads, 0),
        "sid_epochs": (sargs.sid_epochs, 1),
        "sid_fit_sample": (sargs.sid_fit_sample, 0),
        "max_items": (margs.max_items, 2),
        "prefixmem_steps": (margs.prefixmem_steps, 1),
        "prefixmem_table_size": (margs.prefixmem_table_size, 2),
        "prefixmem_head_dim": (margs.prefixmem_head_dim, 1),
        "ranker_steps": (margs.ranker_steps, 1),
        "ranker_beam_negatives": (margs.ranker_beam_negatives, 0),
        "ranker_random_negatives": (margs.ranker_random_negatives, 0),
        "dense_weight": (margs.dense_weight, 0),
        "dense_negatives": (margs.dense_negatives, 0),
        "target_window": (margs.target_window, 1),
        "slots": (margs.slots, 1),
        "slot_anchors": (margs.slot_anchors, 1),
        "holdout": (dargs.holdout, 1),
        "min_length": (
            2 * dargs.holdout + 1 if dargs.min_length is None else dargs.min_length,
            2 * dargs.holdout + 1,
        ),
    }
    for option, (value, low) in smallest.items():
        need(value >= low, option, value, f"it must be >= {low}")
    choices = {  # option: (value, allowed values)
        "sid_tokenizer": (sargs.sid_tokenizer, tuple(sorted(TOKENIZERS))),
        "collision_policy": (sargs.collision_policy, ("suffix", "reassign")),
        "unknown_items": (dargs.unknown_items, ("error", "drop")),
    }
    for option, (value, allowed) in choices.items():
        need(value in allowed, option, value, f"choose one of {', '.join(allowed)}")
    run_checkpoints = Path(rargs.run_dir) / "checkpoints"
    if (
        getattr(targs, "output_dir_given", True)
        and Path(targs.output_dir).resolve() != run_checkpoints.resolve()
    ):
        raise ValueError(
            f"--output_dir {targs.output_dir}: train.py keeps checkpoints in RUN_DIR/checkpoints "
            f"({run_checkpoints}); choose the run with --run_dir instead"
        )
    if targs.resume_from_checkpoint:
        raise ValueError(
            f"--resume_from_checkpoint {targs.resume_from_checkpoint}: train.py resumes with "
            "--resume True (the run's newest checkpoint, once it is checked to come from the "
            "same options)"
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
    if margs.ranker:
        need(
            margs.ranker_targets in ("train", "valid"),
            "ranker_targets",
            margs.ranker_targets,
            "train or valid",
        )
        need(
            math.isfinite(margs.ranker_lr) and margs.ranker_lr > 0,
            "ranker_lr",
            margs.ranker_lr,
            "it must be a finite number > 0",
        )
        need(margs.ranker_tune_users >= 0, "ranker_tune_users", margs.ranker_tune_users, ">= 0")
        need(margs.ranker_eval_every >= 0, "ranker_eval_every", margs.ranker_eval_every, ">= 0")
        need(
            math.isfinite(margs.ranker_prior_weight) and margs.ranker_prior_weight >= 0,
            "ranker_prior_weight",
            margs.ranker_prior_weight,
            "a finite number >= 0",
        )
        need(
            math.isfinite(margs.ranker_list_loss) and margs.ranker_list_loss >= 0,
            "ranker_list_loss",
            margs.ranker_list_loss,
            "a finite number >= 0",
        )
        if margs.ranker_dense_feature or margs.ranker_prior_weight > 0:
            need(margs.dense, "dense", margs.dense, "True: the ranking head reads the dense head")
        if margs.ranker_dense_feature:
            need(
                margs.ranker_features,
                "ranker_features",
                margs.ranker_features,
                "True: the dense score is read beside the beam log-prob",
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
    """Build train.py's argument dataclasses from one flat dict (tests, notebooks); training
    options go by their `TrainingArguments` names or short aliases (`lr`, `epochs`, …)."""
    values = resolve_aliases(SIDTrainingArguments, values)
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    out = []
    for cls in ARGUMENT_CLASSES:
        names = {f.name for f in fields(cls) if f.init}
        out.append(cls(**{k: v for k, v in values.items() if k in names}))
    return tuple(out)
