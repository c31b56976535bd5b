"""A run's evaluation report: `report/metrics.json`, `report/report.md` (tables that read well
on GitHub) and PNG plots; `compare_runs` puts saved reports side by side and says which of them
are stale (the model was retrained after the report was written).

The report reads the `results` dict of `sid.evaluation.evaluate_run`. Keys added after the first
version (`recall_curve`, `per_level_accuracy["popularity"]`, `codebook_usage`, `data_summary`,
`options`, `hardware`, `eval_seconds`, `training["log_history"]`, …) are used when present; an
older `metrics.json` without them still renders, with those sections and plots left out.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from sid.artifacts import atomic_path, dumps_strict, strict_jsonable, write_text_atomic
from sid.metrics import NDCG_KS, RECALL_KS

# The ranking kinds a report can hold, in the order the headline table shows them.
KINDS = ("retrieval", "retrieval+ranking", "dense", "dense+beam", "popularity")
KIND_HELP = {
    "retrieval": "trie-constrained beam search; the top-k beams ranked by their log-probability",
    "retrieval+ranking": "the ranking head rescoring the beam's candidates",
    "dense": "the dense head's top items over the whole catalogue",
    "dense+beam": "dense scores fused with the beam's log-probabilities",
    "popularity": "the most popular training items (the baseline to beat)",
}
# The marker train.py leaves in RUN/report/ when it retrains a model under an existing report.
STALE_MARKER = "STALE"
STALE_RETRAINED = "stale: model retrained since this report"
# Significant digits metrics.json keeps: float32 noise (0.009999999776482582) is cut off.
JSON_DIGITS = 6
# Options the report's short table shows (the full config follows, folded).
KEY_OPTIONS = {
    "data": ("dataset", "min_length", "holdout", "embedding_model", "embeddings"),
    "sid": ("sid_tokenizer", "codebook_sizes", "collision_policy", "sid_epochs"),
    "model": ("model", "max_items", "prefixmem", "ranker", "dense"),
    "run": ("preset",),
    "training_arguments": (
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "learning_rate",
        "lr_scheduler_type",
        "seed",
        "bf16",
    ),
}


def hardware_summary(device: str | torch.device | None = None) -> dict:
    """Where an evaluation ran: CPU, cores, torch threads, accelerator, library versions."""
    import transformers

    device = torch.device(device or "cpu")
    info = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------------------------
# metrics.json


def rounded(obj, digits: int = JSON_DIGITS):
    """`obj` with every float rounded to `digits` significant digits, recursively through dicts,
    lists, tuples, numpy arrays and tensors; ints (and bools) stay what they are, NaN/inf are
    left for `dumps_strict` to turn into null."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return rounded(obj.tolist(), digits)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.{digits}g}")
    return obj


def metrics_json(results: dict) -> str:
    """The text of `metrics.json`: strict JSON (no NaN), floats rounded to JSON_DIGITS."""
    return dumps_strict(rounded(strict_jsonable(results)), indent=2)


# --------------------------------------------------------------------------------------------
# Markdown


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return _cell(value)


def _fmt_value(value) -> str:
    """A config or summary value: floats to 6 significant digits, lists and dicts in one line."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value)
    return _fmt(value)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: dict[str, dict], columns: list[str], *, fmt=_fmt) -> str:
    head = "| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    body = "".join(
        f"| {_cell(name)} | " + " | ".join(fmt(values.get(c)) for c in columns) + " |\n"
        for name, values in rows.items()
    )
    return head + body


def _key_values(pairs: dict) -> str:
    """A two-column table of `pairs` (nested dicts in one cell)."""
    body = "".join(f"| {_cell(k)} | {_fmt_value(v)} |\n" for k, v in pairs.items())
    return "| | |\n|---|---|\n" + body


def metric_rows(results: dict) -> dict[str, dict]:
    """The ranking metrics of every kind `results` holds → {kind: {metric: value}}."""
    return {kind: results[kind] for kind in KINDS if isinstance(results.get(kind), dict)}


def num_levels(results: dict) -> int:
    return len(results["per_level_accuracy"]["teacher_forced"])


def num_base_levels(results: dict) -> int | None:
    """SID levels before the collision level: `num_base_levels`, else the number of base
    codebook sizes (`codebook_sizes`, or the codebook health's); None when neither was saved."""
    if results.get("num_base_levels") is not None:
        return int(results["num_base_levels"])
    sizes = results.get("codebook_sizes") or (results.get("codebook_health") or {}).get(
        "codebook_sizes"
    )
    return len(sizes) if sizes else None


def level_names(results: dict) -> list[str]:
    """`level 0` … with the collision level marked: `level 2 (collision)`."""
    base = num_base_levels(results)
    return [
        f"level {i}" + (" (collision)" if base is not None and i >= base else "")
        for i in range(num_levels(results))
    ]


def protocol_text(results: dict) -> list[str]:
    """The evaluation protocol in plain words, one Markdown bullet per line."""
    split = results["split"]
    window = results.get("window") or 1
    holdout = ((results.get("data_summary") or {}).get("holdout")) or 1
    if results.get("protocol") == "window":
        target = (
            f"a **future window**: the first {window} of each user's {holdout} held-out "
            + ("test" if split == "test" else "validation")
            + " interactions (the run was trained with `--holdout "
            + f"{holdout}`, so none of them was trained on); the history is every item before "
            "the window"
        )
    elif holdout > 1:
        target = (
            "the **next item** after the history: the first of each user's "
            f"{holdout} held-out "
            + ("test" if split == "test" else "validation")
            + f" interactions (`--holdout {holdout}`)"
        )
    else:
        target = (
            "each user's **last** item (the test split); the history is every item before it"
            if split == "test"
            else "each user's **second-to-last** item (the validation split); the history is "
            "every item before it, and the last (test) item is never shown"
        )
    if results["exclude_history"]:
        history = (
            "Items already in the user's history are **excluded** from every ranking (the "
            "history-excluded protocol, the headline protocol of the published ML-1M figures)."
        )
    else:
        history = (
            "History items are **kept**: a ranking may recommend an item the user already "
            "interacted with. The published ML-1M figures exclude history items, so these "
            "numbers are not directly comparable to them."
        )
    popularity = (
        "items ranked by their number of training interactions, counted over the training "
        "interactions of all users (validation and test targets are not counted)"
        + (
            ", leaving out each user's history items."
            if results["exclude_history"]
            else ", the same list for every user."
        )
    )
    lines = [
        f"- **Target**: {target}. {results['users']} users.",
        f"- **Full ranking** over the whole catalogue of {results['catalogue']} items; no "
        "sampled negatives. " + metric_text(results),
        f"- **History**: {history}",
        f"- **Beam search**: {results['num_beams']} beams, top-{results['top_k']} items "
        f"returned, every item generated after the outcome token `<{results['outcome']}>` "
        "(eval.py conditions on the most frequent training outcome unless `--outcome` names "
        "one)."
        + (
            f" The dense head's item log-probabilities weigh in at every SID level (prior "
            f"weight {results['prior_weight']:g})."
            if results.get("prior_weight")
            else ""
        ),
        f"- **Popularity**: {popularity}",
        "- **SID levels**: " + levels_text(results),
    ]
    if results.get("beam_weight") is not None and "retrieval+ranking" in results:
        lines.append(
            f"- **Ranking**: the ranking head rescores the beam's candidates; its score is mixed "
            f"with the beam log-probability at beam weight {results['beam_weight']:g}."
        )
    if results.get("dense_beam_weight") is not None and "dense+beam" in results:
        lines.append(
            f"- **Dense + beam**: dense scores fused with the beam log-probability at weight "
            f"{results['dense_beam_weight']:g}."
        )
    return lines


def metric_text(results: dict) -> str:
    if results.get("protocol") == "window":
        return (
            "Hit@K: share of users with any window item in the top K; Recall@K: the mean over "
            "users of the share of their (distinct) window items in the top K; NDCG@K: the DCG "
            "of the hits over the ideal DCG of min(K, window items)."
        )
    return (
        "Recall@K: share of users whose target is in the top K; NDCG@K: 1/log2(rank + 1) of "
        "the target in the top K; MRR: mean of 1/rank over the top-"
        f"{results['top_k']} list (0 when the target is not in it)."
    )


def metric_columns(results: dict) -> list[str]:
    if results.get("protocol") == "window":
        return (
            [f"hit@{k}" for k in RECALL_KS]
            + [f"recall@{k}" for k in RECALL_KS]
            + [f"ndcg@{k}" for k in NDCG_KS]
        )
    return [f"recall@{k}" for k in RECALL_KS] + [f"ndcg@{k}" for k in NDCG_KS] + ["mrr"]


def outcome_section(results: dict) -> list[str]:
    """Diversity of each row, and its metrics split by the targets' own outcome."""
    lines = []
    diversity = results.get("diversity") or {}
    if diversity:
        columns = sorted({c for row in diversity.values() for c in row})
        lines += [
            "## Diversity",
            "",
            "Distinct level-0 codes: how many coarse SID clusters the top 10 spans; intra-list "
            "distance: mean pairwise cosine distance of the top 10's item embeddings.",
            "",
            _table(diversity, columns),
        ]
    by_outcome = results.get("by_target_outcome") or {}
    rows = {
        f"{kind}, {label} targets": values
        for kind, labels in by_outcome.items()
        for label, values in labels.items()
    }
    if len({label for labels in by_outcome.values() for label in labels}) > 1:
        key = "hit@10" if results.get("protocol") == "window" else "recall@10"
        columns = [key, "recall@20" if key == "recall@10" else "recall@10", "ndcg@10", "users"]
        lines += [
            "## By the targets' outcome",
            "",
            f"Every list was generated under `<{results['outcome']}>`; each row scores it "
            "against the targets with one outcome only (the items the user liked, watched …).",
            "",
            _table(rows, columns),
        ]
    return lines


def levels_text(results: dict) -> str:
    levels, base = num_levels(results), num_base_levels(results)
    text = (
        f"{levels} levels. Level 0 is the coarsest code (a cluster of similar items); each "
        "next level refines its parent's cluster."
    )
    if base is not None and base < levels:
        last = "level " + ", ".join(str(i) for i in range(base, levels))
        text += (
            f" The last level ({last}) is the **collision level**: a running number that only "
            f"tells apart items sharing the same base SID (levels 0–{base - 1}), so it says "
            "little about what the model learned."
        )
    elif base is not None:
        text += " These SIDs have no collision level: every base SID names one item."
    return text


def short_summary(results: dict) -> str:
    """One line: data, model and where and how fast the evaluation ran."""
    parts = []
    data = results.get("data_summary") or {}
    if data:
        name = data.get("dataset") or (results.get("options") or {}).get("data", {}).get("dataset")
        counts = ", ".join(
            f"{data[k]} {k}" for k in ("users", "items", "interactions") if k in data
        )
        parts.append(f"Data: {name + ' — ' if name else ''}{counts}.")
    model = (results.get("options") or {}).get("model", {}).get("model")
    if model:
        parts.append(f"Model: `{model}`.")
    hardware = results.get("hardware") or {}
    where = hardware.get("accelerator") or hardware.get("device")
    if where or results.get("eval_seconds") is not None:
        text = "Evaluated"
        if where:
            text += f" on {where}"
        if results.get("eval_seconds") is not None:
            text += f" in {results['eval_seconds']:.1f} s"
        parts.append(text + ".")
    return " ".join(parts)


def markdown_report(results: dict, *, plots: Collection[str] | None = None) -> str:
    """report.md: protocol, headline table, per-level accuracy, validity, latency, then the
    curves, codebooks, training, data, options and hardware that `results` holds. `plots`
    names the PNG files written beside it (default: those `plot_files(results)` would write);
    only those are embedded."""
    plots = set(plot_files(results) if plots is None else plots)
    levels = level_names(results)
    acc = results["per_level_accuracy"]
    acc_rows = {
        "teacher-forced": dict(zip(levels, acc["teacher_forced"], strict=True)),
        f"in top-{results['top_k']} beams": dict(zip(levels, acc["beam"], strict=True)),
    }
    if acc.get("popularity") is not None:
        acc_rows["popularity guess"] = dict(zip(levels, acc["popularity"], strict=True))
    rows = metric_rows(results)
    columns = metric_columns(results)
    lines = [f"# Evaluation of `{Path(results['run']).name}`", ""]
    summary = short_summary(results)
    if summary:
        lines += [summary, ""]
    lines += ["## Protocol", "", *protocol_text(results), ""]
    lines += ["## Ranking quality", "", _table(rows, columns)]
    lines += [f"- `{kind}`: {KIND_HELP[kind]}" for kind in rows] + [""]
    lines += [
        "## Per-level SID accuracy",
        "",
        "Teacher-forced: given the gold prefix, the gold code is the model's arg-max among the "
        "prefix's valid children. Beam: the gold prefix up to that level is among the returned "
        "beams."
        + (
            " Popularity guess: the code most frequent under the gold prefix among training "
            "interactions — the chance line a learned level must beat."
            if "popularity guess" in acc_rows
            else ""
        ),
        "",
        _table(acc_rows, levels),
    ]
    if "per_level_accuracy.png" in plots:
        lines += ["![per-level accuracy](per_level_accuracy.png)", ""]
    lines += [
        "## Validity and coverage",
        "",
        "Invalid SID rate: returned SIDs that name no item; duplicate rate: repeated items "
        "within a user's list; coverage@K: share of the catalogue that appears in anyone's "
        "top K.",
        "",
        _table({"": results["validity"]}, list(results["validity"])),
    ]
    lines += outcome_section(results)
    lines += ["## Latency", "", latency_text(results), ""]
    lines += recall_curve_section(results, plots)
    lines += codebook_section(results, plots)
    lines += training_section(results, plots)
    lines += context_sections(results)
    return "\n".join(lines).rstrip("\n") + "\n"


def latency_text(results: dict) -> str:
    lat = results["latency"]
    text = (
        f"Beam search per batch of {lat['batch_size']} users: p50 {lat['p50_ms']:.1f} ms, p95 "
        f"{lat['p95_ms']:.1f} ms; {lat['per_user_ms']:.2f} ms per user, "
        f"{lat['users_per_s']:.1f} users/s."
    )
    if lat.get("ranking_share") is not None:
        text += f" The ranking head took {lat['ranking_share']:.0%} of retrieval + ranking time."
    return text


RECALL_CURVE_KS = (1, 5, 10, 20, 50, 100)


def recall_curve_section(results: dict, plots: Collection[str]) -> list[str]:
    curves = results.get("recall_curve") or {}
    if not curves:
        return []
    longest = max(len(c) for c in curves.values())
    ks = [k for k in RECALL_CURVE_KS if k <= longest]
    rows = {
        kind: {f"@{k}": curve[k - 1] for k in ks if k <= len(curve)}
        for kind, curve in curves.items()
    }
    lines = [
        "## Recall@K",
        "",
        f"Recall@K for K = 1 … {longest}. The beam search returns its top-{results['top_k']} "
        "items, so its curves stop there; popularity ranks the whole catalogue.",
        "",
        _table(rows, [f"@{k}" for k in ks]),
    ]
    if "recall_at_k.png" in plots:
        lines += ["![Recall@K](recall_at_k.png)", ""]
    return lines


def usage_rows(results: dict) -> dict[str, dict]:
    """Per SID level: codes used / total, perplexity and items on the busiest code, from
    `codebook_usage` ([L][codes] items per code); empty when the results lack it."""
    usage = results.get("codebook_usage") or []
    names = level_names(results) if len(usage) == num_levels(results) else None
    rows = {}
    for level, counts in enumerate(usage):
        counts = np.asarray(counts, dtype=np.float64)
        name = names[level] if names else f"level {level}"
        rows[name] = {
            "codes used": f"{int((counts > 0).sum())} / {len(counts)}",
            "perplexity": round(_perplexity(counts), 2),
            "items on busiest code": int(counts.max()) if len(counts) else 0,
        }
    return rows


def _perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of the code-usage distribution: K for perfectly even use of K codes."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def codebook_section(results: dict, plots: Collection[str]) -> list[str]:
    rows = usage_rows(results)
    health = results.get("codebook_health") or {}
    if not rows and not health:
        return []
    lines = ["## Codebooks", ""]
    if rows:
        lines += [
            "Items per code of the final SIDs at each level (perplexity: exp of the usage "
            "entropy; equal to the number of codes when every code holds as many items).",
            "",
            _table(rows, ["codes used", "perplexity", "items on busiest code"], fmt=_fmt_value),
        ]
    elif health.get("levels"):
        rows = {
            f"level {h.get('level', i)}": {
                "codes used": f"{h.get('used_codes', '–')} / {h.get('codebook_size', '–')}",
                "perplexity": h.get("perplexity"),
            }
            for i, h in enumerate(health["levels"])
        }
        lines += [
            "Codebook use of the tokenizer's raw codes (before the collision policy).",
            "",
            _table(rows, ["codes used", "perplexity"], fmt=_fmt_value),
        ]
    facts = {
        "collision rate before the policy": health.get("collision_rate_before"),
        "collision rate after the policy": health.get("collision_rate_after"),
        "items in collisions (before)": health.get("items_in_collisions_before"),
        "largest collision group": health.get("largest_collision_group"),
        "collision policy": health.get("policy"),
        "reconstruction MSE": health.get("reconstruction_mse"),
        "quantisation MSE": health.get("quantization_mse"),
    }
    facts = {k: v for k, v in facts.items() if v is not None}
    if facts:
        lines += [_key_values(facts)]
    for name, alt in (
        ("codebook_usage.png", "codebook usage"),
        ("codebook_utilisation.png", "codebook utilisation"),
    ):
        if name in plots:
            lines += [f"![{alt}]({name})", ""]
    return lines


def training_section(results: dict, plots: Collection[str]) -> list[str]:
    training = results.get("training") or {}
    if not training:
        return []
    scalars = {k: v for k, v in training.items() if not isinstance(v, (dict, list))}
    lines = ["## Training", ""]
    if scalars:
        lines += [_key_values(scalars)]
    if "training_loss.png" in plots:
        lines += ["![training loss](training_loss.png)", ""]
    return lines


def context_sections(results: dict) -> list[str]:
    """Data summary, the run's options, the model's identity and the hardware."""
    lines = []
    data = results.get("data_summary") or {}
    if data:
        lines += ["## Data", "", _key_values(data)]
    options = results.get("options") or {}
    if options:
        key = {
            f"{group}.{name}": options[group][name]
            for group, names in KEY_OPTIONS.items()
            for name in names
            if isinstance(options.get(group), dict) and name in options[group]
        }
        lines += ["## Options", ""]
        if key:
            lines += [_key_values(key)]
        full = "".join(
            f"| {_cell(group)}.{_cell(name)} | {_fmt_value(value)} |\n"
            for group, values in options.items()
            if isinstance(values, dict)
            for name, value in values.items()
        )
        if full:
            lines += [
                "<details><summary>All options of the run</summary>",
                "",
                "| | |\n|---|---|\n" + full,
                "</details>",
                "",
            ]
    identity = {
        "model fingerprint": results.get("model_fingerprint"),
        "trained at": results.get("trained_at"),
        "evaluation wall time (s)": results.get("eval_seconds"),
    }
    identity = {k: v for k, v in identity.items() if v is not None}
    hardware = results.get("hardware") or {}
    if hardware or identity:
        lines += ["## Hardware and timing", "", _key_values({**identity, **hardware})]
    return lines


# --------------------------------------------------------------------------------------------
# Plots


def plot_files(results: dict) -> list[str]:
    """The PNG files `results` has the data for, in the order the report shows them."""
    names = ["per_level_accuracy.png"]
    if any((results.get("recall_curve") or {}).values()):
        names.append("recall_at_k.png")
    if results.get("codebook_usage"):
        names.append("codebook_usage.png")
    elif (results.get("codebook_health") or {}).get("levels"):
        names.append("codebook_utilisation.png")  # an old results dict: raw-code utilisation
    if any(_loss_points(results)):
        names.append("training_loss.png")
    return names


def write_report_files(report_dir: str | os.PathLike, results: dict) -> list[str]:
    """Write metrics.json, the PNG plots and report.md into `report_dir` (each atomically) and
    drop a STALE marker left there: the report now describes the model just evaluated.
    Returns the names of the files written."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report_dir / "metrics.json", metrics_json(results))
    plots = _plots(report_dir, results)
    write_text_atomic(report_dir / "report.md", markdown_report(results, plots=plots))
    (report_dir / STALE_MARKER).unlink(missing_ok=True)
    return ["metrics.json", *plots, "report.md"]


def _plots(report_dir: Path, results: dict) -> list[str]:
    """Draw every plot `results` has the data for into `report_dir`; returns the file names."""
    draw = {
        "per_level_accuracy.png": _plot_per_level_accuracy,
        "recall_at_k.png": _plot_recall_at_k,
        "codebook_usage.png": _plot_codebook_usage,
        "codebook_utilisation.png": _plot_codebook_utilisation,
        "training_loss.png": _plot_training_loss,
    }
    written = []
    for name in plot_files(results):
        fig = draw[name](results)
        fig.tight_layout()
        with atomic_path(report_dir / name) as tmp:
            fig.savefig(tmp, dpi=110)
        written.append(name)
    return written


def _figure(width: float = 5.5, height: float = 3.4):
    # A bare Figure renders with the Agg canvas and touches no global pyplot state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _plot_per_level_accuracy(results: dict):
    acc = results["per_level_accuracy"]
    levels = np.arange(len(acc["teacher_forced"]))
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(levels - 0.2, acc["teacher_forced"], width=0.4, label="teacher-forced")
    ax.bar(levels + 0.2, acc["beam"], width=0.4, label=f"in top-{results['top_k']} beams")
    if acc.get("popularity") is not None:
        ax.hlines(
            acc["popularity"],
            levels - 0.45,
            levels + 0.45,
            colors="black",
            linestyles="dashed",
            label="popularity guess (chance)",
        )
    ax.set_xticks(levels, [n.replace(" (", "\n(") for n in level_names(results)])
    ax.set_ylim(0, 1.3)  # headroom for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax.set_title("Per-level SID accuracy")
    return fig


def _plot_recall_at_k(results: dict):
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = _figure()
    ax = fig.add_subplot()
    for kind, curve in results["recall_curve"].items():
        if not curve:
            continue
        ks = np.arange(1, len(curve) + 1)
        style = {"linestyle": "dashed", "color": "black"} if kind == "popularity" else {}
        ax.plot(ks, curve, label=kind, **style)
    longest = max(len(c) for c in results["recall_curve"].values())
    ax.set_xscale("log")
    ax.set_xticks([k for k in RECALL_CURVE_KS if k <= longest])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("K")
    ax.set_ylabel("Hit@K (future window)" if results.get("protocol") == "window" else "Recall@K")
    ax.set_ylim(0, None)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Recall@K ({results['split']} split, full ranking)")
    return fig


def _plot_codebook_usage(results: dict):
    from matplotlib.ticker import MaxNLocator

    usage = results["codebook_usage"]
    names = level_names(results) if len(usage) == num_levels(results) else None
    fig = _figure(3.2 * len(usage), 3.2)
    axes = fig.subplots(1, len(usage), squeeze=False)[0]
    for level, (ax, counts) in enumerate(zip(axes, usage, strict=True)):
        counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
        used = int((counts > 0).sum())
        ranks = np.arange(1, len(counts) + 1)
        ax.bar(ranks, counts, width=1.0, label="items per code")
        if len(counts):
            ax.axhline(
                counts.sum() / len(counts), color="black", linestyle="dashed", label="even use"
            )
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        name = names[level] if names else f"level {level}"
        ax.set_title(
            f"{name}\n{used}/{len(counts)} codes used, perplexity {_perplexity(counts):.1f}",
            fontsize=9,
        )
        ax.set_xlabel("code rank")
        if level == 0:
            ax.set_ylabel("items per code")
            ax.legend(fontsize=7)
    fig.suptitle("Codebook usage of the SIDs", fontsize=10)
    return fig


def _plot_codebook_utilisation(results: dict):
    health = results["codebook_health"]["levels"]
    util = [h["utilisation"] for h in health]
    fig = _figure(5, 3.2)
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(len(util)), util)
    labels = [f"{h.get('used_codes', '?')}/{h.get('codebook_size', '?')}" for h in health]
    ax.bar_label(bars, labels, fontsize=8)
    ax.set_xticks(np.arange(len(util)), [f"level {i}" for i in range(len(util))])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of codes used")
    ax.set_title("Codebook utilisation (raw codes)")
    return fig


def _loss_points(results: dict) -> tuple[list[tuple], list[tuple]]:
    """(train, eval) loss points (step, loss) of `training["log_history"]`."""
    history = (results.get("training") or {}).get("log_history") or []
    train = [(h["step"], h["loss"]) for h in history if _finite(h.get("loss")) and "step" in h]
    evals = [
        (h["step"], h["eval_loss"]) for h in history if _finite(h.get("eval_loss")) and "step" in h
    ]
    return train, evals


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plot_training_loss(results: dict):
    train, evals = _loss_points(results)
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Training loss")
    return fig


# --------------------------------------------------------------------------------------------
# Staleness and comparison


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def report_is_stale(run_dir: str | os.PathLike) -> str | None:
    """Why `RUN/report/` no longer describes `RUN/model/`, or None when nothing says so.

    Stale when train.py left a `report/STALE` marker (it retrained the model under an existing
    report), or when the model fingerprint the report recorded at eval time differs from the one
    in `model/sid_vocab.json`. A report from before fingerprints were recorded, or a run without
    a report, is not called stale.
    """
    run_dir = Path(run_dir)
    report = run_dir / "report"
    reasons = []
    marker = report / STALE_MARKER
    if marker.exists():
        try:
            note = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            note = ""
        reasons.append(
            f"{STALE_RETRAINED}: train.py left report/{STALE_MARKER}"
            + (f" ({note})" if note else "")
        )
    reported = (_read_json(report / "metrics.json") or {}).get("model_fingerprint")
    vocab_file = run_dir / "model" / "sid_vocab.json"
    if reported is not None and not vocab_file.exists():
        reasons.append(f"stale: the model this report describes is gone ({vocab_file} missing)")
    elif reported is not None:
        current = (_read_json(vocab_file) or {}).get("model_fingerprint")
        if current != reported:
            reasons.append(
                f"{STALE_RETRAINED}: the report evaluated model {reported}, "
                f"model/ now holds {current}"
            )
    return "; ".join(reasons) or None


def mark_report_stale(run_dir: str | os.PathLike, note: str = "") -> bool:
    """Leave `RUN/report/STALE` (with `note`) when RUN has a report; train.py calls this when it
    retrains the model under an existing report. Returns whether a marker was written."""
    report = Path(run_dir) / "report"
    if not (report / "metrics.json").exists():
        return False
    write_text_atomic(report / STALE_MARKER, note.strip() + "\n" if note.strip() else "")
    return True


COMPARE_COLUMNS = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr"]


def compare_runs(run_dirs: list[str | os.PathLike]) -> str:
    """A Markdown table of the saved metrics of several runs, side by side: one row per run and
    ranking kind (popularity once per distinct baseline), teacher-forced accuracy per level on
    the retrieval row; rows of a stale report are marked with the reason."""
    rows: dict[str, dict] = {}
    names: dict[str, Path] = {}
    baselines, notes = [], []
    for run in run_dirs:
        run = Path(run)
        path = run / "report" / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python eval.py {run}` first")
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is corrupt ({err}); re-run `python eval.py {run}`") from err
        name = run.name
        if names.setdefault(name, run.resolve()) != run.resolve():
            name = str(run)  # two runs with one folder name: tell them apart by path
        stale = report_is_stale(run)
        suffix = ""
        if stale:
            if f"- `{name}`: {stale}" not in notes:
                notes.append(f"- `{name}`: {stale}")
            suffix = f" ({STALE_RETRAINED if stale.startswith(STALE_RETRAINED) else 'stale'})"
        for kind, values in metric_rows(results).items():
            if kind == "popularity":
                if values in baselines:
                    continue
                baselines.append(values)
            row = dict(values)
            if kind == "retrieval":
                tf = results["per_level_accuracy"]["teacher_forced"]
                row.update({f"tf acc L{i}": v for i, v in enumerate(tf)})
            rows[f"{name} ({kind}){suffix}"] = row
    extra = sorted(
        {c for r in rows.values() for c in r if c.startswith("tf acc L")},
        key=lambda c: int(c.removeprefix("tf acc L")),
    )
    hits = [c for c in ("hit@10", "hit@20") if any(c in r for r in rows.values())]
    table = _table(rows, hits + COMPARE_COLUMNS + extra)
    if notes:
        table += "\nStale reports (re-run `python eval.py RUN` to refresh them):\n\n"
        table += "\n".join(notes) + "\n"
    return table
