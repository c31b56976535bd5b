"""Evaluate a run directory: full-ranking retrieval (+ rescoring) → metrics → report.

eval.py parses arguments and calls `evaluate_run` (or `sid.report.compare_runs`). The models
are served by `sid.recommender.Recommender`; this module loads the data split, loops over user
batches, and computes the metrics. The report is written to `RUN/report/`: `metrics.json`,
`report.md` (tables that read well on GitHub) and PNG plots.

Under a multi-process launch (`accelerate launch --num_processes N eval.py RUN`, CPUs or
GPUs) the user batches are split between the processes in contiguous blocks
(`shard_batches`), every process evaluates its block, the per-user results are gathered in
process order with `accelerate.utils.gather_object` — the same arrays, in the same order, as
one process computes — and only the main process writes the report.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sid import metrics as M
from sid.data import LeaveOneOutSplit
from sid.dense import DENSE_BEAM_WEIGHT
from sid.distributed import distributed_state, process_slice
from sid.model import SIDRecModel
from sid.ranking import DEFAULT_BEAM_WEIGHT
from sid.recommender import (
    BATCH_SIZE,
    Recommender,
    check_ranker_binding,
    history_tensors,
    left_pad,
    read_run_config,
)
from sid.retrieval import BeamSearchConfig, teacher_forced_level_correct

logger = logging.getLogger(__name__)

# the popularity and dense recall curves run to this depth (retrieval's to top_k)
CURVE_DEPTH = 100


def load_run_data(run_dir: Path) -> tuple[LeaveOneOutSplit, dict]:
    """Rebuild the run's data split from its config.json → (split, config)."""
    from sid.data import load_split

    config = read_run_config(run_dir)
    _, split = load_split(dict(config["data"]))
    return split, config


def check_eval_options(
    *,
    num_beams: int,
    top_k: int,
    batch_size: int,
    beam_weight: float,
    max_users: int | None,
    prior_weight: float = BeamSearchConfig.prior_weight,
) -> BeamSearchConfig:
    """Refuse out-of-range evaluation options before any model is loaded → the beam search's
    options (the outcome is filled in once the run's labels are known)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if num_beams >= 1 and top_k > num_beams:
        raise ValueError(f"top_k={top_k} needs num_beams >= top_k, got num_beams={num_beams}")
    beam = BeamSearchConfig(num_beams=num_beams, top_k=top_k, prior_weight=prior_weight)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= beam_weight <= 1.0:
        raise ValueError(f"beam_weight must be in [0, 1], got {beam_weight}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 (or left out for all users), got {max_users}")
    return beam


def history_batch(
    rec: SIDRecModel, split: LeaveOneOutSplit, users: np.ndarray, which: str, max_items: int
):
    """Left-padded token histories of kept users `users` (their last `max_items` items) + their
    whole history items (-1 padded) → (input_ids [B, T], attention_mask [B, T], items [B, M])."""
    pairs = [split.history(u, which) for u in np.asarray(users).tolist()]
    batch = history_tensors(
        rec.vocab, rec.sids.codes, rec.tokenizer.pad_token_id,
        [items for items, _ in pairs], [outcomes for _, outcomes in pairs], max_items=max_items,
    )  # fmt: skip
    return batch.input_ids, batch.attention_mask, batch.seen


# --------------------------------------------------------------------------- processes
def shard_batches(
    num_users: int, batch_size: int, num_processes: int = 1, process_index: int = 0
) -> list[int]:
    """First user of each batch that process `process_index` of `num_processes` evaluates.

    The batches are the one-process run's (`range(0, num_users, batch_size)`), split in
    contiguous blocks like `PartialState.split_between_processes` (the first
    `len % num_processes` processes take one more): the blocks, in process order, are all the
    batches once, in order — so the gathered per-user results line up with one process's.
    """
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} of {num_processes} processes")
    starts = list(range(0, num_users, batch_size))
    lo, hi = process_slice(len(starts), num_processes, process_index)
    return starts[lo:hi]


def _process_device(device: str | None, state) -> str | torch.device | None:
    """The device of this process: under a multi-process launch `None` (or a bare "cuda")
    means the process's own accelerator (`cuda:LOCAL_RANK`; the CPU when launched with
    --cpu); a device named in full is used as given."""
    if state is None or device not in (None, "cuda"):
        return device
    if device == "cuda" and state.device.type != "cuda":
        return device
    return state.device


def _gathered(local: dict, state) -> list[dict]:
    """Every process's `local` results, in process order (just `[local]` for one process)."""
    if state is None:
        return [local]
    from accelerate.utils import gather_object

    return gather_object([local])


def _joined(parts: list[dict], key: str):
    """Concatenate the processes' `key` tensors in process order (None when none has one)."""
    pieces = [p[key] for p in parts if p[key] is not None]
    return torch.cat(pieces) if pieces else None


# --------------------------------------------------------------------------- protocols
PROTOCOLS = ("next", "window")
DIVERSITY_K = 10


def check_window(protocol: str, window: int | None, holdout: int, run_dir) -> int:
    """The number of held-out items each user is scored against (1 under "next")."""
    if protocol == "next":
        if window not in (None, 1):
            raise ValueError(f"--window {window} needs --protocol window")
        return 1
    if holdout < 2:
        raise ValueError(
            f"{run_dir}: --protocol window needs a run trained with --holdout W >= 2 (its last "
            f"W interactions held out, so that no window item was trained on); this run holds "
            f"out {holdout}"
        )
    window = holdout if window is None else int(window)
    if not 1 <= window <= holdout:
        raise ValueError(
            f"--window {window}: the run holds out {holdout} interactions per user "
            f"(--holdout {holdout}); choose a window in [1, {holdout}]"
        )
    return window


class Scorer:
    """The metrics of one protocol for ranked lists [B, K] of the evaluated users."""

    def __init__(self, protocol, gold_items, window_items, window_outcomes, outcome_labels):
        self.protocol = protocol
        self.gold = np.asarray(gold_items)  # [B] the next item
        self.window = np.asarray(window_items)  # [B, W] (W = 1 under "next")
        self.window_outcomes = np.asarray(window_outcomes)
        self.labels = list(outcome_labels)

    def __call__(self, ranked) -> dict:
        if self.protocol == "window":
            return M.window_metrics(ranked, self.window)
        return M.ranking_metrics(ranked, self.gold)

    def curve(self, ranked, depth: int | None = None) -> list[float]:
        if self.protocol == "window":
            return M.window_recall_curve(ranked, self.window, depth)
        return M.recall_curve(ranked, self.gold, depth)

    def by_outcome(self, ranked) -> dict:
        """Per outcome label: the metrics against the targets with that outcome only (under
        "window", each user's window items of that outcome; users without one left out)."""
        ranked = np.asarray(ranked)
        out = {}
        for o, label in enumerate(self.labels):
            if self.protocol == "window":
                gold = np.where(self.window_outcomes == o, self.window, -1)
                found = M.window_metrics(ranked, gold)
            else:
                users = self.window_outcomes[:, 0] == o
                found = {**M.ranking_metrics(ranked[users], self.gold[users])}
                found["users"] = int(users.sum())
            if found["users"]:
                out[label] = found
        return out


def run_item_embeddings(run_dir: Path, item_ids: list[str]) -> np.ndarray | None:
    """The run's item embeddings (for the intra-list distance), None when it has none."""
    path = Path(run_dir) / "embeddings.safetensors"
    if not path.is_file():
        return None
    from sid.embed import load_item_embeddings

    return load_item_embeddings(path, item_ids)


def diversity(ranked, codes, embeddings) -> dict:
    """Distinct level-0 codes and intra-list embedding distance of the top `DIVERSITY_K`."""
    out = {f"distinct_level0@{DIVERSITY_K}": M.distinct_first_codes(ranked, codes, DIVERSITY_K)}
    if embeddings is not None:
        out[f"intra_list_distance@{DIVERSITY_K}"] = M.intra_list_distance(
            ranked, embeddings, DIVERSITY_K
        )
    return out


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split_name: str = "test",
    num_beams: int = BeamSearchConfig.num_beams,
    top_k: int = 20,
    batch_size: int = BATCH_SIZE,
    outcome: str | None = None,
    exclude_history: bool = True,
    max_users: int | None = None,
    rerank: bool = True,
    device: str | None = None,
    outcome_weights: dict[str, float] | None = None,
    beam_weight: float = DEFAULT_BEAM_WEIGHT,
    write_report: bool = True,
    dense_beam_weight: float = DENSE_BEAM_WEIGHT,
    protocol: str = "next",
    window: int | None = None,
    slots: int | None = None,
    prior_weight: float = BeamSearchConfig.prior_weight,
) -> dict:
    """Full-ranking evaluation of a trained run on the `split_name` targets.

    Every catalogue item is a candidate; `exclude_history` leaves out the items the user has
    seen. Rows: `retrieval` (the beam search's order), `retrieval+ranking` (a trained ranking
    head's, unless `rerank=False`), `popularity`, and for a run trained with `--dense`,
    `dense` (the dense head's full-catalogue top items) and `dense+beam`
    (`sid.dense.fused_scores` with `dense_beam_weight`). `outcome` (default: the most frequent
    train outcome) is the one decoded under.

    `protocol` "next": each user's target is the next item after the history (leave-one-out;
    for a run trained with `--holdout W`, the first item of the held-out window). "window":
    the targets are the first `window` (default: all W) items of each user's held-out window,
    scored by `sid.metrics.window_metrics` (hit@K, recall@K as the mean found share, NDCG@K);
    the run must have been trained with `--holdout` >= `window`, so that no window item was
    trained on. Either way every row also reports diversity (distinct level-0 codes and
    intra-list embedding distance of the top 10) and the metrics by the targets' own outcome
    (`by_target_outcome`: how well the items the user liked, or only watched, are found).

    `slots`: query slots of a model trained with `--slots` k that the beam search decodes and
    the dense head scores with (None: all k; 1: the next-item slot alone).

    `prior_weight` > 0 (runs with a dense head): the beam search ranks prefixes by their SID
    log-prob plus this weight times the dense head's log-mass under them
    (:class:`~sid.retrieval.BeamSearchConfig`); the `retrieval` rows are then that search's.

    Launched over several processes (`accelerate launch --num_processes N`), each process
    evaluates its block of user batches (`shard_batches`) on its own device (`device=None`:
    the process's accelerator, see `_process_device`), the per-user results are gathered in
    user order, and every process returns the same metrics — those of one process, bar the
    timings; only the main process logs and writes the report. `latency` is then measured
    per process over its own batches, pooled over all batches, with `num_processes` and the
    processes' combined `aggregate_users_per_s`.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if split_name not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split_name!r}")
    beam = check_eval_options(
        num_beams=num_beams,
        top_k=top_k,
        batch_size=batch_size,
        beam_weight=beam_weight,
        max_users=max_users,
        prior_weight=prior_weight,
    )
    state = distributed_state(device)
    num_processes = 1 if state is None else state.num_processes
    process_index = 0 if state is None else state.process_index
    is_main = process_index == 0
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    split, config = load_run_data(run_dir)
    window = check_window(protocol, window, split.holdout, run_dir)
    recommender = Recommender.from_run(
        run_dir, device=_process_device(device, state), rerank=rerank
    )
    rec = recommender.rec
    from sid.retrieval import resolve_slots

    slots = resolve_slots(slots, rec.vocab)
    if rec.sids.item_ids != split.data.item_ids:
        raise ValueError(
            f"{run_dir}: the semantic IDs' item catalogue differs from the dataset's; "
            "the run was trained on other data"
        )
    if outcome is None:
        outcome = split.most_frequent_train_outcome()
    budget = dict(outcome) if isinstance(outcome, dict) else None
    if budget is not None:  # candidates per outcome: {"like": 15, "watch": 5}
        if sum(budget.values()) != top_k:
            raise ValueError(
                f"the outcome budget {budget} asks for {sum(budget.values())} candidates; "
                f"it must sum to --top_k {top_k}"
            )
        # teacher-forced accuracy is read under the outcome with the largest share
        outcome = max(budget, key=budget.get)
        for label in budget:
            rec.vocab.outcome_id(label)
    rec.vocab.outcome_id(outcome)  # unknown label → clear error before any work
    beam = replace(beam, outcome=budget or outcome, slots=slots)
    ranker = recommender.ranker

    users = np.arange(split.num_users)
    if max_users:
        users = users[:max_users]
    gold_items = split.targets(split_name)[0][users]
    gold_codes = rec.sids.codes[torch.as_tensor(gold_items)]
    window_items, window_outcomes = (a[users][:, :window] for a in split.window_targets(split_name))
    score = Scorer(protocol, gold_items, window_items, window_outcomes, split.data.outcome_labels)
    if is_main:
        logger.info(
            f"evaluating {run_dir} on {len(users)} users ({split_name} targets"
            + (f", future window of {window}" if protocol == "window" else "")
            + f"{'history excluded' if exclude_history else 'history kept'}, outcome {outcome}, "
            f"methods {', '.join(recommender.methods)}) on {recommender.device}"
            + (f", {num_processes} processes" if num_processes > 1 else "")
        )
    ranked, beam_codes, beam_outcomes, reranked, level_correct = [], [], [], [], []
    dense_ranked, fused_ranked, dense_deep = [], [], []
    batch_seconds, batch_sizes, rank_seconds = [], [], 0.0
    seen_items = []  # [b, M] history items per batch, -1 padded
    starts = shard_batches(len(users), batch_size, num_processes, process_index)
    bar = tqdm(starts, desc="eval", unit="batch", mininterval=1, leave=False, disable=not is_main)
    with torch.inference_mode():
        for start in bar:
            batch = users[start : start + batch_size]
            input_ids, mask, seen = history_batch(
                rec, split, batch, split_name, recommender.max_items
            )
            found = recommender.retrieve(
                input_ids,
                mask,
                seen if exclude_history else None,
                beam=beam,
                beam_weight=beam_weight,
                outcome_weights=outcome_weights,
                dense=budget is None,  # the dense head scores under one outcome label
            )
            seen_items.append(seen)
            batch_seconds.append(found.beam_seconds)
            batch_sizes.append(len(batch))
            rank_seconds += found.rank_seconds
            ranked.append(found.beams.items.cpu())
            beam_codes.append(found.beams.codes.cpu())
            beam_outcomes.append(found.beams.outcomes.cpu())
            if found.dense_logits is not None:
                # one top-k at the curve's depth; its first top_k columns are the dense ranking
                deep = found.dense_top(max(top_k, CURVE_DEPTH))[1].cpu()
                dense_ranked.append(deep[:, :top_k])
                dense_deep.append(deep[:, :CURVE_DEPTH])
                fused_ranked.append(found.dense_top(top_k, beam_weight=dense_beam_weight)[1].cpu())
            if found.ranked is not None:
                reranked.append(found.ranked.items.cpu())
            level_correct.append(
                teacher_forced_level_correct(
                    rec.lm,
                    rec.vocab,
                    recommender.trie,
                    input_ids.to(rec.device),
                    mask.to(rec.device),
                    gold_codes[start : start + batch_size].to(rec.device),
                    outcome=outcome,
                ).cpu()
            )
    # the popularity baseline of this process's users: row by row, so it shards too
    popular = None
    if batch_sizes:
        histories = None
        if exclude_history:  # the batches' history items, padded to one width
            width = max(int(x.shape[1]) for x in seen_items)
            histories = torch.cat(
                [F.pad(x.cpu(), (width - x.shape[1], 0), value=-1) for x in seen_items]
            )
        popular = M.popularity_ranking(
            split.train_items,
            num_items=split.data.num_items,
            k=max(top_k, CURVE_DEPTH),
            exclude=histories,
            num_users=sum(batch_sizes),
        )
    local = {
        "ranked": ranked,
        "codes": beam_codes,
        "beam_outcomes": beam_outcomes,
        "reranked": reranked,
        "dense_ranked": dense_ranked,
        "fused_ranked": fused_ranked,
        "dense_deep": dense_deep,
        "level_correct": level_correct,
    }
    local = {k: torch.cat(v) if v else None for k, v in local.items()}
    local.update(
        popular=popular,
        batch_seconds=batch_seconds,
        batch_sizes=batch_sizes,
        rank_seconds=rank_seconds,
    )
    parts = _gathered(local, state)  # one dict per process, in process order
    evaluated = sum(sum(p["batch_sizes"]) for p in parts)
    if evaluated != len(users):
        raise RuntimeError(f"the processes evaluated {evaluated} users of {len(users)}")
    batch_seconds = [t for p in parts for t in p["batch_seconds"]]
    batch_sizes = [n for p in parts for n in p["batch_sizes"]]
    rank_seconds = sum(p["rank_seconds"] for p in parts)
    ranked_np = _joined(parts, "ranked").numpy()
    codes = _joined(parts, "codes")
    results: dict = {
        "run": str(run_dir),
        "split": split_name,
        "users": int(len(users)),
        "catalogue": int(split.data.num_items),
        "num_beams": num_beams,
        "top_k": top_k,
        "prior_weight": prior_weight,
        "outcome": budget or outcome,
        "exclude_history": exclude_history,
        "beam_weight": beam_weight if ranker is not None else None,
        "model_fingerprint": recommender.model_fingerprint,
        "num_processes": num_processes,
        "protocol": protocol,
        "window": window,
        "slots": slots,
        "retrieval": score(ranked_np),
    }
    tf = _joined(parts, "level_correct").float().mean(dim=0)
    train_codes = rec.sids.codes[torch.as_tensor(split.train_items)]
    results["per_level_accuracy"] = {
        "teacher_forced": [round(float(x), 4) for x in tf.tolist()],
        "beam": [round(float(x), 4) for x in M.beam_prefix_accuracy(codes, gold_codes)],
        "popularity": M.popularity_level_accuracy(train_codes, gold_codes),
    }
    if budget is not None:  # the mix the beam delivered: share of candidates per outcome
        decoded = _joined(parts, "beam_outcomes")
        decoded = decoded[ranked_np >= 0] if decoded is not None else torch.zeros(0)
        results["outcome_mix"] = {
            label: round(float((decoded == rec.vocab.outcomes.index(label)).double().mean()), 6)
            if len(decoded)
            else 0.0
            for label in budget
        }
    results["validity"] = {
        "invalid_sid_rate": M.invalid_sid_rate(codes, rec.sids.trie),
        "duplicate_rate": M.duplicate_rate(ranked_np),
        **{f"coverage@{k}": M.coverage_at_k(ranked_np, split.data.num_items, k) for k in (10, 20)},
    }
    results["latency"] = {
        **M.latency_summary(batch_seconds, batch_sizes),
        "batch_size": batch_size,
        "num_processes": num_processes,
    }
    if num_processes > 1:  # the processes ran side by side: the slowest one bounds them
        slowest = max(sum(p["batch_seconds"]) for p in parts)
        results["latency"]["aggregate_users_per_s"] = (
            len(users) / slowest if slowest > 0 else float("inf")
        )
    reranked = _joined(parts, "reranked")
    if reranked is not None:
        results["latency"]["ranking_share"] = rank_seconds / (sum(batch_seconds) + rank_seconds)
    popular = _joined(parts, "popular").numpy()
    rows = {"retrieval": ranked_np, "popularity": popular[:, :top_k]}
    curves = {
        "retrieval": score.curve(ranked_np),
        "popularity": score.curve(popular[:, :CURVE_DEPTH], CURVE_DEPTH),
    }
    if reranked is not None:
        rows["retrieval+ranking"] = reranked.numpy()
        curves["retrieval+ranking"] = score.curve(rows["retrieval+ranking"])
    dense_top = _joined(parts, "dense_ranked")
    if dense_top is not None:
        rows["dense"] = dense_top.numpy()
        rows["dense+beam"] = _joined(parts, "fused_ranked").numpy()
        results["dense_beam_weight"] = dense_beam_weight
        curves["dense"] = score.curve(_joined(parts, "dense_deep").numpy(), CURVE_DEPTH)
    embeddings = run_item_embeddings(run_dir, split.data.item_ids)
    results["diversity"], results["by_target_outcome"] = {}, {}
    for kind, top in rows.items():
        if kind != "retrieval":
            results[kind] = score(top)
        results["diversity"][kind] = diversity(top, rec.sids.codes, embeddings)
        results["by_target_outcome"][kind] = score.by_outcome(top)
    results["recall_curve"] = curves
    results["codebook_usage"] = M.codebook_usage(rec.sids.codes, rec.sids.codebook_sizes)
    results["codebook_sizes"] = list(rec.sids.codebook_sizes)
    results["num_base_levels"] = rec.sids.num_base_levels
    results["codebook_health"] = config.get("codebook_health")
    results["training"] = config.get("training")
    results["trained_at"] = config.get("trained_at")
    results["data_summary"] = {**split.data.summary(), **split.summary()}
    results["options"] = {
        k: config[k] for k in ("data", "sid", "model", "run", "training_arguments") if k in config
    }
    from sid.report import hardware_summary

    results["hardware"] = {**hardware_summary(recommender.device), "num_processes": num_processes}
    results["eval_seconds"] = round(time.perf_counter() - started, 3)
    if is_main:
        logger.info(
            f"evaluated {len(users)} users in {results['eval_seconds']:.1f}s: "
            + ", ".join(
                f"{kind} recall@10 {results[kind]['recall@10']:.4f}"
                for kind in ("retrieval", "retrieval+ranking", "dense", "dense+beam", "popularity")
                if kind in results and "recall@10" in results[kind]
            )
        )
    if write_report and is_main:
        from sid.report import write_report_files

        write_report_files(run_dir / "report", results)
    if state is not None:
        state.wait_for_everyone()  # every process returns once the report is written
    return results


__all__ = [
    "check_ranker_binding",
    "evaluate_run",
    "history_batch",
    "left_pad",
    "load_run_data",
    "shard_batches",
]
