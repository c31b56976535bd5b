"""The training pipeline as stages over a run directory: data → embeddings → SID tokenizer →
semantic IDs → (PrefixMem pre-training) → LM fine-tuning → (ranking head).

train.py only parses arguments and calls `run_training`. Each stage records a fingerprint of
its inputs in `stages.json`; when its artifact exists with the same fingerprint the stage is
skipped, so re-running a finished command costs seconds and changing one option redoes only
what depends on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sid.artifacts import dumps_strict, write_json_atomic
from sid.data import InteractionData, LeaveOneOutSplit, format_summary, load_split
from sid.embed import check_embeddings, embed_texts, load_item_embeddings, save_embeddings
from sid.report import mark_report_stale, rounded
from sid.run.arguments import (
    DataArguments,
    ModelArguments,
    RunArguments,
    SIDArguments,
    SIDTrainingArguments,
    library_default,
    parse_sizes,
    validate_arguments,
)
from sid.run.rundir import RANKER_BINDING, RunDir, fingerprint

logger = logging.getLogger(__name__)


def embeddings_stage(
    run: RunDir, data: InteractionData, args: DataArguments
) -> tuple[np.ndarray, str]:
    source = args.embeddings or args.embedding_model
    key = fingerprint("embeddings", source, data.item_ids, data.item_texts)
    path = run.path / "embeddings.safetensors"
    if run.fresh("embeddings", key, path.name):
        vectors = load_item_embeddings(path, data.item_ids)
        logger.info(f"embeddings: reused {path} ({vectors.shape[0]}×{vectors.shape[1]})")
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
    logger.info(f"embeddings: {vectors.shape[0]}×{vectors.shape[1]} from {source} → {path}")
    return vectors, key


def fit_sample(num_items: int, sample: int, seed: int) -> np.ndarray | None:
    """Sorted rows of the `sample` items a SID tokenizer is fitted on (drawn with `seed`), or
    None for all of them (`sample` 0 or at least the catalogue)."""
    if sample <= 0 or sample >= num_items:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_items, sample, replace=False))


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

    sizes = parse_sizes(args.codebook_sizes, num_items=data.num_items)
    options = {"kind": args.sid_tokenizer, "codebook_sizes": sizes, "seed": seed}
    if args.sid_tokenizer == "rqvae":
        options["epochs"] = args.sid_epochs
    fit_rows = fit_sample(data.num_items, args.sid_fit_sample, seed)
    key = fingerprint(
        "tokenizer",
        emb_key,
        options,
        *(("fit_sample", args.sid_fit_sample),) if fit_rows is not None else (),
    )
    sid_key = fingerprint("semantic_ids", key, args.collision_policy)
    if run.fresh("tokenizer", key, "tokenizer/config.json") and run.fresh(
        "semantic_ids", sid_key, "semantic_ids.json"
    ):
        sids = SemanticIDs.load(run.path)
        logger.info(f"semantic IDs: reused {run.path / 'semantic_ids.json'}")
        return load_sid_tokenizer(run.path / "tokenizer"), sids, sid_key, None
    kind = options.pop("kind")
    tokenizer = build_sid_tokenizer(kind, **options)
    start = time.perf_counter()
    tokenizer.fit(vectors if fit_rows is None else vectors[fit_rows])
    if fit_rows is not None:
        logger.info(f"SID tokenizer fitted on {len(fit_rows):,} of {data.num_items:,} items")
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
    logger.info(
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
        logger.info(f"PrefixMem: loaded {args.prefixmem_path} ({pm.num_parameters():,} parameters)")
        return pm, fingerprint("prefixmem", "path", str(Path(args.prefixmem_path).resolve()))
    hidden_size = base_hidden_size(
        args.model, trust_remote_code=args.trust_remote_code, tiny=args.tiny_config
    )
    options = {
        "table_size": args.prefixmem_table_size,
        "head_dim": args.prefixmem_head_dim,
        "pretrain_steps": args.prefixmem_steps if args.prefixmem_pretrain else 0,
    }
    key = fingerprint("prefixmem", sid_key, options, seed, hidden_size)
    if run.fresh("prefixmem", key, "prefixmem_init/config.json"):
        logger.info(f"PrefixMem: reused {run.path / 'prefixmem_init'}")
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
        logger.info(f"PrefixMem: pre-trained: {dumps_strict(rounded(metrics))}")
    pm.save_pretrained(run.staging / "prefixmem_init")
    run.mark("prefixmem", key)
    logger.info(
        f"PrefixMem: {pm.num_parameters():,} parameters, attached to the LM's input embeddings"
    )
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


# The TrainingArguments that change the trained weights: they enter the model's fingerprint.
# Everything else (logging, checkpointing, trackers, the parallel engine, gradient
# checkpointing) may change between runs without retraining, and under --resume.
WEIGHT_OPTIONS = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "optim_args",
    "label_smoothing_factor",
    "bf16",
    "fp16",
    "seed",
    "data_seed",
)


def weight_options(targs: SIDTrainingArguments) -> dict:
    """The training options that shape the weights, JSON-ready (enums as their values)."""
    values = json.loads(targs.to_json_string())
    return {k: values[k] for k in WEIGHT_OPTIONS if k in values}


def model_stage(
    run: RunDir,
    split: LeaveOneOutSplit,
    sids,
    sid_key: str,
    prefixmem,
    pm_key,
    margs: ModelArguments,
    rargs: RunArguments,
    targs: SIDTrainingArguments,
):
    from sid.model import SIDRecModel, tiny_overrides
    from sid.training import (
        build_eval_examples,
        build_train_windows,
        make_trainer,
        tokens_per_epoch,
    )

    tiny = tiny_overrides(margs.tiny_config)  # {} unless --tiny_config
    key = fingerprint(
        "model",
        sid_key,
        pm_key,
        split.fingerprint(),
        margs.model,
        margs.max_items,
        margs.stride,
        margs.outcome_loss,
        weight_options(targs),
        *((("dense", margs.dense_weight),) if margs.dense else ()),
        *(
            (("dense_negatives", margs.dense_negatives),)
            if margs.dense and margs.dense_negatives
            else ()
        ),
        *((("target_window", margs.target_window),) if margs.target_window > 1 else ()),
        *(
            (("target_window_seconds", margs.target_window_seconds),)
            if margs.target_window > 1 and margs.target_window_seconds is not None
            else ()
        ),
        *((("slots", margs.slots, margs.slot_anchors),) if margs.slots > 1 else ()),
        *((("outcome_conditioning", False),) if not margs.outcome_conditioning else ()),
        *((("dropout", margs.dropout),) if margs.dropout else ()),
        *((("tiny_config", tiny),) if tiny else ()),
    )
    check_compatible_run(run, sids, rargs.overwrite)
    if run.fresh("model", key, "model/sid_vocab.json"):
        logger.info(f"model: reused {run.path / 'model'}")
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
        logger.info(f"--resume: no checkpoint in {checkpoints}; training starts from step 0")
    if rargs.resume and found:
        from sid.artifacts import check_weights_folder

        newest = max(
            found,
            key=lambda p: (
                int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1
            ),
        )
        check_weights_folder(newest, what="checkpoint")  # a truncated one fails in one line
        logger.info(f"--resume: continuing from {newest}")
    if checkpoints.exists() and not rargs.resume and not same_options:
        shutil.rmtree(checkpoints)  # checkpoints of another configuration
    rec = SIDRecModel.build(
        margs.model,
        sids,
        split.data.outcome_labels,
        slots=margs.slots,
        conditioned=margs.outcome_conditioning,
        trust_remote_code=margs.trust_remote_code,
        **tiny,
    )
    if prefixmem is not None:
        prefixmem.attach(rec.lm, rec.vocab)
        rec.prefixmem = prefixmem
    if margs.dense:
        from sid.dense import DenseConfig, DenseRetrieval

        hidden = int(rec.lm.config.get_text_config().hidden_size)
        rec.dense = DenseRetrieval(DenseConfig(num_items=len(sids), hidden_size=hidden))
        rec.dense.attach(rec.lm, rec.vocab, sids)
    if margs.dropout:
        from sid.model import add_dropout

        add_dropout(rec.lm, margs.dropout)
    train = build_train_windows(
        split,
        sids,
        rec.vocab,
        max_items=margs.max_items,
        stride=margs.stride,
        outcome_loss=margs.outcome_loss,
        target_window=margs.target_window,
        target_window_seconds=margs.target_window_seconds,
    )
    valid = build_eval_examples(split, sids, rec.vocab, max_items=margs.max_items, which="valid")
    if rargs.eval_users:
        valid = {k: v[: rargs.eval_users] for k, v in valid.items()}
    n_params = sum(p.numel() for p in rec.lm.parameters())
    logger.info(
        f"model {margs.model}: {n_params / 1e6:.2f}M parameters; {len(train['input_ids'])} "
        f"training windows, {tokens_per_epoch(train):,} tokens per epoch"
    )
    targs.output_dir = str(checkpoints)  # validate_arguments refused any other folder
    trainer = make_trainer(
        rec.lm,
        train,
        valid,
        targs,
        rec.tokenizer.pad_token_id,
        dense_weight=margs.dense_weight,
        dense_negatives=margs.dense_negatives,
        item_tokens=rec.vocab.sid_token_ids(sids.codes) if margs.target_window > 1 else None,
        vocab=rec.vocab,
        slot_anchors=margs.slot_anchors,
    )
    run.mark_now("model_started", key)
    resume = rargs.resume and bool(found)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(newest) if resume else None)
    seconds = time.perf_counter() - start
    best_step = _best_step(trainer)
    kept_step = trainer.state.global_step if best_step is None else best_step
    final = [
        h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == kept_step
    ]
    if final:  # training already validated the kept step: do not run it twice
        metrics = {k: v for k, v in final[-1].items() if k.startswith("eval_")}
    else:
        metrics = trainer.evaluate()
    # Throughput of training proper: the validation passes inside train() are taken out.
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    tokens_seen = tokens_per_epoch(train) * float(trainer.state.epoch or 0.0)
    if resume:
        tokens_seen = float("nan")  # part of the epochs ran in an earlier process
    stats = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        # --load_best_model_at_end: the step whose weights were kept (picked on validation)
        "best_step": best_step,
        "processes": trainer.args.world_size,
        # whether the Trainer trained the LM with activation (gradient) checkpointing
        "gradient_checkpointing": bool(
            getattr(rec.lm, "is_activation_checkpointing", None)
            if hasattr(rec.lm, "is_activation_checkpointing")
            else getattr(rec.lm, "is_gradient_checkpointing", False)
        ),
        "train_seconds": round(seconds, 1),
        "train_tokens_per_second": round(tokens_seen / max(1e-9, seconds - eval_seconds), 1),
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        # the loss curve for the report: one entry per logging / validation step
        "log_history": [
            {k: h[k] for k in ("step", "epoch", "loss", "eval_loss") if k in h}
            for h in trainer.state.log_history
            if "loss" in h or "eval_loss" in h
        ],
    }
    if trainer.is_world_process_zero():
        rec.lm.eval()
        rec.save_pretrained(run.staging, fingerprint=key)
        run.mark("model", key)
    summary = rounded({k: v for k, v in stats.items() if k != "log_history"})
    logger.info(f"model trained: {dumps_strict(summary)}")
    return rec, stats, key


def _best_step(trainer) -> int | None:
    """The step of the checkpoint `load_best_model_at_end` restored, or None (the last)."""
    best = trainer.state.best_model_checkpoint
    if not trainer.args.load_best_model_at_end or not best:
        return None
    return int(str(best).rstrip("/").rsplit("-", 1)[-1])


def run_training(
    dargs: DataArguments,
    sargs: SIDArguments,
    margs: ModelArguments,
    rargs: RunArguments,
    targs: SIDTrainingArguments,
) -> Path:
    """Every stage of train.py; returns the run directory.

    The run is one transaction: stages write into the run's staging folder and the run
    directory changes only when every stage has finished (see `RunDir.commit`). Options, the
    model name and the codebook's capacity are checked before any long work starts.
    """
    validate_arguments(dargs, sargs, margs, rargs, targs)
    from sid.model import resolve_model_source

    resolve_model_source(margs.model, trust_remote_code=margs.trust_remote_code)
    if rargs.threads:
        torch.set_num_threads(rargs.threads)
    torch.manual_seed(targs.seed)
    start = time.perf_counter()
    data, split = load_split(asdict(dargs))
    sizes = parse_sizes(sargs.codebook_sizes, num_items=data.num_items)
    if sargs.codebook_sizes == "auto":
        logger.info(
            f"--codebook_sizes auto: {','.join(map(str, sizes))} for {data.num_items:,} items"
        )
    check_codebook_capacity(sizes, data.num_items, sargs)
    run = RunDir(rargs.run_dir)
    try:
        logger.info(f"data {data.name}:\n{format_summary({**data.summary(), **split.summary()})}")
        vectors, emb_key = embeddings_stage(run, data, dargs)
        _, sids, sid_key, health = sid_stage(run, data, vectors, emb_key, sargs, targs.seed)
        prefixmem, pm_key = prefixmem_stage(run, sids, vectors, sid_key, margs, targs.seed)
        rec, train_stats, model_key = model_stage(
            run, split, sids, sid_key, prefixmem, pm_key, margs, rargs, targs
        )
        if int(os.environ.get("RANK", "0")) != 0:
            run.discard()  # under accelerate/torchrun the main process commits the run
            return run.path
        ranker_stats = (
            ranker_stage(run, rec, split, model_key, margs, targs.seed) if margs.ranker else None
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
            # every TrainingArguments option as the Trainer saw it (its own JSON form)
            "training_arguments": json.loads(targs.to_json_string()),
            "summary": {**data.summary(), **split.summary()},
            "stages": {**run.stages, **run.pending},
            "codebook_health": health if health is not None else old.get("codebook_health"),
            "training": train_stats if train_stats is not None else old.get("training"),
            "ranker": ranker_stats if ranker_stats is not None else old.get("ranker"),
            # what Recommender serves by default: the most frequent train outcome
            "serving": {"outcome": split.most_frequent_train_outcome()},
            "trained_at": (
                time.strftime("%Y-%m-%dT%H:%M:%S%z")
                if train_stats is not None
                else old.get("trained_at")
            ),
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
        if new_model and mark_report_stale(
            run.path,
            f"The model in ../model was retrained after this report was written; run "
            f"`python eval.py {run.path}` to replace it.",
        ):
            logger.warning(
                f"{run.path / 'report'} describes the previous model and is now marked stale; "
                f"re-run `python eval.py {run.path}`"
            )
    except BaseException:
        run.discard()
        raise
    finally:
        run.close()
    logger.info(f"done in {time.perf_counter() - start:.0f}s; run directory: {run.path}")
    return run.path


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
    if max(sizes) > n_items:
        fitting = ",".join(str(min(s, n_items)) for s in sizes)
        raise ValueError(
            f"--codebook_sizes {sargs.codebook_sizes}: a level cannot have more codes than the "
            f"catalogue has items ({n_items:,}); pass e.g. --codebook_sizes {fitting}, or "
            "--codebook_sizes auto to size the levels from the catalogue"
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


def ranker_stage(
    run: RunDir,
    rec,
    split: LeaveOneOutSplit,
    model_key: str,
    margs: ModelArguments,
    seed: int,
) -> dict | None:
    """Train the cross-attention ranking head on train-split data with the LM frozen."""
    from sid.ranking import RankingHead, RankingHeadConfig
    from sid.ranking_training import RankingExamples, train_ranker

    key = fingerprint(
        "ranker",
        model_key,
        margs.ranker_steps,
        *(
            (("lr", margs.ranker_lr),)
            if margs.ranker_lr != library_default(train_ranker, "lr")
            else ()
        ),
        margs.ranker_beam_negatives,
        margs.ranker_random_negatives,
        margs.ranker_features,
        margs.ranker_dense_feature,
        margs.ranker_targets,
        margs.ranker_tune_users if margs.ranker_targets == "valid" else None,
        margs.ranker_prior_weight,
        *((margs.ranker_eval_every, margs.ranker_tune_users) if margs.ranker_eval_every else ()),
        margs.ranker_exclude_history,
        margs.ranker_list_loss,
        seed,
    )
    if run.fresh("ranker", key, "ranker/config.json"):
        logger.info(f"ranking head: reused {run.path / 'ranker'}")
        return None
    torch.manual_seed(seed)
    head = RankingHead(
        RankingHeadConfig(
            hidden_size=int(rec.lm.config.get_text_config().hidden_size),
            num_levels=rec.vocab.num_levels,
            outcomes=list(rec.vocab.outcomes),
            score_features=(2 if margs.ranker_dense_feature else 1) if margs.ranker_features else 0,
        )
    )
    examples = split
    if margs.ranker_targets == "valid":
        users = np.arange(min(margs.ranker_tune_users, split.num_users), split.num_users)
        examples = RankingExamples.from_split(split, "valid", users)
        logger.info(
            f"ranking head: trained on the validation targets of {len(users):,} users (the "
            f"first {split.num_users - len(users):,} are left to pick weights)"
        )
    tune = None
    n_tune = min(margs.ranker_tune_users, split.num_users)
    if margs.ranker_eval_every and n_tune and margs.ranker_beam_negatives >= 2:
        # validation targets, never test: the head keeps the step that ranks them best
        tune = RankingExamples.from_split(split, "valid", np.arange(n_tune))
    rec.lm.eval()
    # beams under the outcome eval.py serves by default: the most frequent train outcome
    stats = train_ranker(
        head,
        rec.lm,
        rec.vocab,
        rec.sids,
        examples,
        steps=margs.ranker_steps,
        lr=margs.ranker_lr,
        seed=seed,
        max_history=margs.max_items,
        n_beam_negatives=margs.ranker_beam_negatives,
        n_random_negatives=0 if margs.ranker_features else margs.ranker_random_negatives,
        beam_outcome=split.most_frequent_train_outcome(),
        prior=rec.dense if margs.ranker_dense_feature or margs.ranker_prior_weight > 0 else None,
        prior_weight=margs.ranker_prior_weight,
        exclude_history=margs.ranker_exclude_history,
        list_loss_weight=margs.ranker_list_loss,
        tune=tune,
        eval_every=max(1, margs.ranker_eval_every),
    )
    head.save_pretrained(run.staging / "ranker")
    # which model the head was trained on: eval refuses a head that belongs to another model
    write_json_atomic(run.staging / "ranker" / RANKER_BINDING, {"model_fingerprint": model_key})
    run.mark("ranker", key)
    summary = {k: v for k, v in stats.items() if k != "losses"}
    logger.info(f"ranking head trained: {dumps_strict(rounded(summary))}")
    return summary
