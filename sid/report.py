"""A run's evaluation report: `report/metrics.json`, `report/report.md` (tables that read well
on GitHub) and PNG plots; `compare_runs` puts saved reports side by side."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from sid.artifacts import atomic_path, dumps_strict, write_text_atomic
from sid.metrics import NDCG_KS, RECALL_KS


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


def _table(rows: dict[str, dict], columns: list[str]) -> str:
    head = "| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    body = "".join(
        f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |\n"
        for name, values in rows.items()
    )
    return head + body


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metric_rows(results: dict) -> dict[str, dict]:
    rows = {"popularity": results["popularity"], "retrieval": results["retrieval"]}
    if "retrieval+ranking" in results:
        rows["retrieval+ranking"] = results["retrieval+ranking"]
    for kind in ("dense", "dense+beam"):
        if kind in results:
            rows[kind] = results[kind]
    return rows


def markdown_report(results: dict) -> str:
    columns = [f"recall@{k}" for k in RECALL_KS] + [f"ndcg@{k}" for k in NDCG_KS] + ["mrr"]
    levels = len(results["per_level_accuracy"]["teacher_forced"])
    acc_rows = {
        "teacher-forced": dict(
            zip(
                map(str, range(levels)),
                results["per_level_accuracy"]["teacher_forced"],
                strict=True,
            )
        ),
        f"in top-{results['top_k']} beams": dict(
            zip(map(str, range(levels)), results["per_level_accuracy"]["beam"], strict=True)
        ),
    }
    lat = results["latency"]
    lines = [
        f"# Evaluation of `{Path(results['run']).name}`",
        "",
        f"{results['split']} targets of {results['users']} users, full ranking over "
        f"{results['catalogue']} items; beam search with {results['num_beams']} beams, "
        f"top-{results['top_k']}, outcome `{results['outcome']}`, history items "
        f"{'excluded' if results['exclude_history'] else 'allowed'}.",
        "",
        "## Ranking quality",
        "",
        _table(metric_rows(results), columns),
        "## Per-level SID accuracy",
        "",
        "Teacher-forced: the gold code is the arg-max among the valid children of the gold "
        "prefix. Beam: the gold prefix up to that level is among the returned beams.",
        "",
        _table(acc_rows, [str(i) for i in range(levels)]),
        "## Validity and coverage",
        "",
        _table({"": results["validity"]}, list(results["validity"])),
        "## Latency",
        "",
        f"Per batch of {lat['batch_size']} users: p50 {lat['p50_ms']:.1f} ms, p95 "
        f"{lat['p95_ms']:.1f} ms; {lat['per_user_ms']:.2f} ms per user, "
        f"{lat['users_per_s']:.1f} users/s.",
        "",
        "![per-level accuracy](per_level_accuracy.png)",
    ]
    if results.get("codebook_health"):
        lines.append("![codebook utilisation](codebook_utilisation.png)")
    return "\n".join(lines) + "\n"


def write_report_files(report_dir: Path, results: dict) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report_dir / "metrics.json", dumps_strict(results, indent=2))
    write_text_atomic(report_dir / "report.md", markdown_report(results))
    _plots(report_dir, results)


def _plots(report_dir: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = results["per_level_accuracy"]
    levels = np.arange(len(acc["teacher_forced"]))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(levels - 0.2, acc["teacher_forced"], width=0.4, label="teacher-forced")
    ax.bar(levels + 0.2, acc["beam"], width=0.4, label=f"in top-{results['top_k']} beams")
    ax.set_xticks(levels, [f"level {i}" for i in levels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.set_title("Per-level SID accuracy")
    fig.tight_layout()
    _save_png(fig, report_dir / "per_level_accuracy.png")
    plt.close(fig)
    health = results.get("codebook_health") or {}
    util = [level["utilisation"] for level in health.get("levels", [])]
    if util:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(np.arange(len(util)), util)
        ax.set_xticks(np.arange(len(util)), [f"level {i}" for i in range(len(util))])
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of codes used")
        ax.set_title("Codebook utilisation")
        fig.tight_layout()
        _save_png(fig, report_dir / "codebook_utilisation.png")
        plt.close(fig)


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def compare_runs(run_dirs: list[str | os.PathLike]) -> str:
    """A Markdown table of the saved metrics of several runs, side by side."""
    rows = {}
    for run in run_dirs:
        path = Path(run) / "report" / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python eval.py {run}` first")
        results = json.loads(path.read_text())
        name = Path(run).name
        for kind, values in metric_rows(results).items():
            if kind == "popularity" and len(rows) > 0:
                continue
            rows[f"{name} ({kind})"] = values
        tf = results["per_level_accuracy"]["teacher_forced"]
        rows[f"{name} ({'retrieval'})"].update({f"tf acc L{i}": v for i, v in enumerate(tf)})
    columns = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr"]
    extra = sorted({c for r in rows.values() for c in r if c.startswith("tf acc")})
    return _table(rows, columns + extra)
