"""Evaluate a run directory: full-ranking retrieval (+ rescoring) → metrics → report.

eval.py parses arguments and calls `evaluate_run` (or `sid.report.compare_runs`). The report is written to
`RUN/report/`: `metrics.json`, `report.md` (tables that read well on GitHub) and PNG plots.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from sid import metrics as M
from sid.data import LeaveOneOutSplit
from sid.model import SIDRecModel
from sid.retrieval import constrained_beam_search, teacher_forced_level_correct

# Share of the beam log-prob in the dense + beam fusion (sid.dense.fuse_with_beam); chosen on
# the validation split of ML-1M by benchmarks/bench_quality.py, never on test.
DENSE_BEAM_WEIGHT = 0.0


def load_run_data(run_dir: Path) -> tuple[LeaveOneOutSplit, dict]:
    """Rebuild the run's data split from its config.json → (split, config)."""
    from sid.data import load_split

    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: is {run_dir} a run directory of train.py?"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is corrupt: {err}") from err
    try:
        data_options = dict(config["data"])
        int(config["model"]["max_items"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{config_path} lacks the run's data or model options ({err!r}); re-run train.py"
        ) from err
    _, split = load_split(data_options)
    return split, config


def check_eval_options(
    *, num_beams: int, top_k: int, batch_size: int, beam_weight: float, max_users: int | None
) -> None:
    """Refuse out-of-range evaluation options before any model is loaded."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_k > num_beams:
        raise ValueError(f"top_k={top_k} needs num_beams >= top_k, got num_beams={num_beams}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= beam_weight <= 1.0:
        raise ValueError(f"beam_weight must be in [0, 1], got {beam_weight}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 (or left out for all users), got {max_users}")


def check_ranker_binding(run_dir: Path, rec: SIDRecModel) -> None:
    """Refuse a ranking head that was trained on top of another model than `rec`."""
    from sid.run.rundir import RANKER_BINDING

    binding = run_dir / "ranker" / RANKER_BINDING
    if not binding.exists():
        return  # a head saved outside train.py: nothing recorded to check
    try:
        trained_for = json.loads(binding.read_text(encoding="utf-8")).get("model_fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{binding} is corrupt ({err}); retrain the head with --ranker") from err
    if rec.fingerprint is not None and trained_for != rec.fingerprint:
        raise ValueError(
            f"{run_dir / 'ranker'} was trained on model {trained_for}, but {run_dir / 'model'} "
            f"is model {rec.fingerprint}; retrain the head (train.py --ranker) or pass --no_rerank"
        )


def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences → (input_ids [B, T], attention_mask [B, T]), padded on the left."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, longest - len(seq) :] = seq
            mask[row, longest - len(seq) :] = 1
    return ids, mask


def history_batch(
    rec: SIDRecModel, split: LeaveOneOutSplit, users: np.ndarray, which: str, max_items: int
):
    """Left-padded token histories of kept users `users` + their history items (-1 padded)."""
    sequences, histories = [], []
    for u in users.tolist():
        items, outcomes = split.history(u, which)
        histories.append(torch.as_tensor(items, dtype=torch.long))
        sequences.append(rec.history_tokens(items[-max_items:], outcomes[-max_items:]))
    input_ids, mask = left_pad(sequences, rec.tokenizer.pad_token_id)
    return input_ids, mask, left_pad(histories, -1)[0]


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split_name: str = "test",
    num_beams: int = 20,
    top_k: int = 20,
    batch_size: int = 64,
    outcome: str | None = None,
    exclude_history: bool = True,
    max_users: int | None = None,
    rerank: bool = True,
    device: str | None = None,
    outcome_weights: dict[str, float] | None = None,
    beam_weight: float = 0.5,
    write_report: bool = True,
    dense_beam_weight: float = DENSE_BEAM_WEIGHT,
) -> dict:
    """Full-ranking evaluation of a trained run on the `split_name` targets.

    A run trained with `--dense` also reports `dense` (its dense head's full-catalogue top
    items) and `dense+beam` (`sid.dense.fuse_with_beam` with `dense_beam_weight`).
    """
    run_dir = Path(run_dir)
    if split_name not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split_name!r}")
    check_eval_options(
        num_beams=num_beams,
        top_k=top_k,
        batch_size=batch_size,
        beam_weight=beam_weight,
        max_users=max_users,
    )
    split, config = load_run_data(run_dir)
    rec = SIDRecModel.from_pretrained(run_dir, device=device)
    if rec.sids.item_ids != split.data.item_ids:
        raise ValueError(
            f"{run_dir}: the semantic IDs' item catalogue differs from the dataset's; "
            "the run was trained on other data"
        )
    max_items = int(config["model"]["max_items"])
    if outcome is None:
        # The most frequent train outcome; the gold outcome would leak the label.
        counts = np.bincount(split.train_outcomes, minlength=len(split.data.outcome_labels))
        outcome = split.data.outcome_labels[int(counts.argmax())]
    rec.vocab.outcome_id(outcome)  # unknown label → clear error before any work

    ranker = None
    if rerank and (run_dir / "ranker" / "config.json").exists():
        from sid.ranking import RankingHead

        check_ranker_binding(run_dir, rec)
        ranker = RankingHead.from_pretrained(run_dir / "ranker")
        ranker.to(rec.device).eval()

    users = np.arange(split.num_users)
    if max_users:
        users = users[:max_users]
    gold_items = split.targets(split_name)[0][users]
    gold_codes = rec.sids.codes[torch.as_tensor(gold_items)]
    trie = rec.sids.trie.to(rec.device)
    ranked, beam_codes, reranked, level_correct = [], [], [], []
    dense_ranked, fused_ranked = [], []
    batch_seconds, batch_sizes, rank_seconds = [], [], 0.0
    with torch.inference_mode():
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            input_ids, mask, exclude = history_batch(rec, split, batch, split_name, max_items)
            input_ids, mask = input_ids.to(rec.device), mask.to(rec.device)
            t0 = time.perf_counter()
            out = constrained_beam_search(
                rec.lm,
                rec.vocab,
                trie,
                input_ids,
                mask,
                num_beams=num_beams,
                top_k=top_k,
                outcome=outcome,
                exclude_items=exclude.to(rec.device) if exclude_history else None,
                return_states=ranker is not None,
            )
            batch_seconds.append(time.perf_counter() - t0)
            batch_sizes.append(len(batch))
            ranked.append(out.items.cpu())
            beam_codes.append(out.codes.cpu())
            if rec.dense is not None:
                from sid.dense import dense_logits, fuse_with_beam

                logits = dense_logits(
                    rec.lm, rec.dense, input_ids, mask, rec.vocab.outcome_id(outcome)
                )
                ex = exclude.to(rec.device) if exclude_history else None
                for weight, sink in ((0.0, dense_ranked), (dense_beam_weight, fused_ranked)):
                    top = fuse_with_beam(
                        logits, out.items, out.scores, beam_weight=weight, k=top_k, exclude=ex
                    )
                    sink.append(top.cpu())
            if ranker is not None:
                from sid.ranking import rank_candidates

                t1 = time.perf_counter()
                ranked_out = rank_candidates(
                    ranker,
                    rec.lm,
                    rec.vocab,
                    rec.sids,
                    out.history_states,
                    out.history_mask,
                    out.items,
                    beam_scores=out.scores,
                    outcome_weights=outcome_weights,
                    beam_weight=beam_weight,
                )
                rank_seconds += time.perf_counter() - t1
                reranked.append(ranked_out.items.cpu())
            level_correct.append(
                teacher_forced_level_correct(
                    rec.lm,
                    rec.vocab,
                    trie,
                    input_ids,
                    mask,
                    gold_codes[start : start + batch_size].to(rec.device),
                    outcome=outcome,
                ).cpu()
            )
    ranked_np = torch.cat(ranked).numpy()
    codes = torch.cat(beam_codes)
    results: dict = {
        "run": str(run_dir),
        "split": split_name,
        "users": int(len(users)),
        "catalogue": int(split.data.num_items),
        "num_beams": num_beams,
        "top_k": top_k,
        "outcome": outcome,
        "exclude_history": exclude_history,
        "beam_weight": beam_weight if ranker is not None else None,
        "retrieval": M.ranking_metrics(ranked_np, gold_items),
    }
    tf = torch.cat(level_correct).float().mean(dim=0)
    results["per_level_accuracy"] = {
        "teacher_forced": [round(float(x), 4) for x in tf.tolist()],
        "beam": [round(float(x), 4) for x in M.beam_prefix_accuracy(codes, gold_codes)],
    }
    results["validity"] = {
        "invalid_sid_rate": M.invalid_sid_rate(codes, rec.sids.trie),
        "duplicate_rate": M.duplicate_rate(ranked_np),
        **{f"coverage@{k}": M.coverage_at_k(ranked_np, split.data.num_items, k) for k in (10, 20)},
    }
    results["latency"] = {**M.latency_summary(batch_seconds, batch_sizes), "batch_size": batch_size}
    if reranked:
        results["latency"]["ranking_share"] = rank_seconds / (sum(batch_seconds) + rank_seconds)
    histories = None
    if exclude_history:
        histories = left_pad(
            [torch.as_tensor(split.history(u, split_name)[0]) for u in users.tolist()], -1
        )[0]
    popular = M.popularity_ranking(
        split.train_items,
        num_items=split.data.num_items,
        k=top_k,
        exclude=histories,
        num_users=len(users),
    ).numpy()
    results["popularity"] = M.ranking_metrics(popular, gold_items)
    if reranked:
        results["retrieval+ranking"] = M.ranking_metrics(torch.cat(reranked).numpy(), gold_items)
    if dense_ranked:
        results["dense"] = M.ranking_metrics(torch.cat(dense_ranked).numpy(), gold_items)
        results["dense+beam"] = M.ranking_metrics(torch.cat(fused_ranked).numpy(), gold_items)
        results["dense_beam_weight"] = dense_beam_weight
    results["codebook_health"] = config.get("codebook_health")
    results["training"] = config.get("training")
    if write_report:
        from sid.report import write_report_files

        write_report_files(run_dir / "report", results)
    return results


__all__ = ["evaluate_run"]
