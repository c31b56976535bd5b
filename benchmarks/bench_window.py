"""Future-window training, query slots and outcome conditioning on ML-1M (PinRec's protocol).

Runs of the `ml1m` preset with the same budget on the same future-window split (each user's
last 10 interactions held out for test, the 10 before them for validation, `--holdout 10`),
and a leave-one-out pair:

    python train.py --preset ml1m --holdout 10 --run_dir runs/ml1m-h10                      # next item
    python train.py --preset ml1m --holdout 10 --target_window 10 --run_dir runs/ml1m-h10-w10
    python train.py --preset ml1m --holdout 10 --target_window 10 --slots 4 --run_dir runs/ml1m-h10-w10-s4
    python train.py --preset ml1m --holdout 10 --target_window 10 --outcome_conditioning False \
        --run_dir runs/ml1m-h10-w10-any                                                     # no outcome token
    python train.py --preset ml1m --run_dir runs/ml1m-next
    python train.py --preset ml1m --target_window 10 --slots 4 --run_dir runs/ml1m-w10-s4

This script evaluates every trained one, all users, full ranking, history excluded:

- the window protocol (`--protocol window`): hit@K / recall@K / NDCG@K against the 10
  held-out test interactions, diversity (distinct level-0 codes, intra-list distance of the
  top 10) and latency;
- the next-item protocol (the first held-out interaction), and leave-one-out for the
  leave-one-out pair;
- the slot model decoded with its first slot alone (`--slots 1`): k slots against 1 slot of
  the same weights;
- outcome conditioning: lists generated under `<like>` and under `<watch>`, each scored
  against the items the user went on to like and against those the user only watched
  (ratings >= 4 are `like`), and a budget {"like": 15, "watch": 5} with the mix it delivered;
  the unconditioned run (`--outcome_conditioning False`: every outcome is the one token
  `<any>`) is the "no outcome token" row, scored on the same real outcomes.

    HF_HUB_OFFLINE=1 python benchmarks/bench_window.py --json runs/window/bench_window.json
    python benchmarks/bench_window.py --table          # the Markdown tables of BENCHMARKS.md

Each evaluation is stored in the JSON as soon as it finishes, and a re-run skips the ones
already there (`--redo` evaluates again) and the runs not trained yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

RUNS = {
    "next-item": "runs/ml1m-h10",
    "window-10": "runs/ml1m-h10-w10",
    "window-10+4 slots": "runs/ml1m-h10-w10-s4",
    "window-10, no outcome token": "runs/ml1m-h10-w10-any",
    "loo/next-item": "runs/ml1m-next",
    "loo/window-10+4 slots": "runs/ml1m-w10-s4",
}
SLOT_RUNS = ("window-10+4 slots", "loo/window-10+4 slots")
UNCONDITIONED_RUNS = ("window-10, no outcome token",)  # the same lists under any outcome
KINDS = ("retrieval", "dense", "dense+beam", "popularity")
KEEP = (
    "protocol",
    "window",
    "slots",
    "outcome",
    "users",
    "per_level_accuracy",
    "latency",
    "diversity",
    "by_target_outcome",
    "outcome_mix",
    "validity",
    "eval_seconds",
    "model_fingerprint",
)


def evaluations() -> dict[str, dict]:
    """name → (run label, evaluate_run options)."""
    out = {}
    for label in RUNS:
        if label.startswith("loo/"):  # leave-one-out runs: the next item, under each outcome
            out[f"{label}/next"] = (label, dict(protocol="next"))
            if label in SLOT_RUNS:
                out[f"{label}/next/1 slot"] = (label, dict(protocol="next", slots=1))
            out[f"{label}/next/watch"] = (label, dict(protocol="next", outcome="watch"))
            continue
        out[f"{label}/window"] = (label, dict(protocol="window"))
        if label in SLOT_RUNS:
            out[f"{label}/window/1 slot"] = (label, dict(protocol="window", slots=1))
        if label in UNCONDITIONED_RUNS:
            out[f"{label}/next"] = (label, dict(protocol="next"))
            continue
        out[f"{label}/window/watch"] = (label, dict(protocol="window", outcome="watch"))
        out[f"{label}/window/budget"] = (
            label,
            dict(protocol="window", outcome={"like": 15, "watch": 5}),
        )
        out[f"{label}/next"] = (label, dict(protocol="next"))
    return out


def summary(results: dict) -> dict:
    row = {k: results[k] for k in KEEP if k in results}
    row.update({k: results[k] for k in KINDS if k in results})
    return row


def _f(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _latency(res: dict) -> str:
    lat = res.get("latency") or {}
    return f"{lat['per_user_ms']:.1f}" if "per_user_ms" in lat else "–"


def _evaluated(done: dict, protocol: str):
    """(shown label, row kind, results) of every stored evaluation under `protocol`, run by
    run, the slot runs decoded with all slots then with one."""
    for label in RUNS:
        for name in (f"{label}/{protocol}", f"{label}/{protocol}/1 slot"):
            res = done.get(name)
            shown = label if name.endswith(f"/{protocol}") else f"{label}, decoded with 1 slot"
            for kind in KINDS if res else ():
                # dense+beam at a beam weight of 0 (the default) is the dense list again
                same = kind == "dense+beam" and res.get(kind) == res.get("dense")
                if kind in res and not same:
                    yield shown, kind, res


def tables(done: dict) -> str:
    """The Markdown tables of BENCHMARKS.md from the stored evaluations."""
    out = []
    head = ["hit@10", "hit@20", "recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    rows = []
    for shown, kind, res in _evaluated(done, "window"):
        div = res["diversity"][kind]
        cells = [_f(res[kind].get(c)) for c in head]
        cells += [f"{div['distinct_level0@10']:.2f}", f"{div['intra_list_distance@10']:.3f}"]
        lat = _latency(res) if kind == "retrieval" else ""
        rows.append(f"| {shown} | {kind} | " + " | ".join(cells) + f" | {lat} |")
    if rows:
        cols = [*head, "distinct L0 codes@10", "intra-list dist@10", "beam ms/user"]
        out += [
            "| training | row | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
            *rows,
            "",
        ]
    rows = []
    for shown, kind, res in _evaluated(done, "next"):
        cells = [_f(res[kind].get(c)) for c in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")]
        div = res["diversity"][kind]["distinct_level0@10"]
        rows.append(f"| {shown} | {kind} | " + " | ".join(cells) + f" | {div:.2f} |")
    if rows:
        out += [
            "| training | row | recall@10 | recall@20 | ndcg@10 | ndcg@20 | distinct L0 codes@10 |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    rows = []
    for name, res in done.items():
        if "/budget" in name or "1 slot" in name or res.get("outcome") not in ("like", "watch"):
            continue
        groups = res["by_target_outcome"]["retrieval"]
        key = "hit@20" if res["protocol"] == "window" else "recall@20"
        cells = [
            _f(groups.get(o, {}).get(key)) + f" ({groups.get(o, {}).get('users', 0)})"
            for o in ("like", "watch")
        ]
        label = name.rsplit("/", 1)[0] if name.endswith("/watch") else name
        under = (
            "no outcome token"
            if label.split("/")[0] in UNCONDITIONED_RUNS
            else f"`<{res['outcome']}>`"
        )
        rows.append(
            f"| {label} | {res['protocol']} | {under} | {key} | " + " | ".join(cells) + " |"
        )
    if rows:
        out += [
            "| run | protocol | generated under | metric | liked targets (users) | watched targets (users) |",
            "|---|---|---|---|---|---|",
            *sorted(rows),
            "",
        ]
    for name, res in done.items():
        if res.get("outcome_mix"):
            mix = ", ".join(f"{k} {v:.1%}" for k, v in res["outcome_mix"].items())
            out.append(f"Budget {res['outcome']} ({name}): delivered {mix}.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "window" / "bench_window.json")
    p.add_argument("--num_beams", type=int, default=20)
    p.add_argument("--top_k", type=int, default=20)
    p.add_argument("--max_users", type=int, default=None)
    p.add_argument("--only", nargs="*", help="evaluate only these names, in this order")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--table", action="store_true", help="print the Markdown tables and stop")
    args = p.parse_args()
    if args.table:
        if not args.json.is_file():
            p.error(f"{args.json}: no evaluations stored yet; run without --table first")
        print(tables(json.loads(args.json.read_text())))
        return

    from sid.evaluation import evaluate_run

    done = json.loads(args.json.read_text()) if args.json.is_file() else {}
    every = evaluations()
    unknown = [n for n in args.only or () if n not in every]
    if unknown:
        p.error(f"unknown evaluation(s) {unknown}; known: {list(every)}")
    for name in args.only or every:  # --only: in the order given
        label, options = every[name]
        run = ROOT / RUNS[label]
        if not (run / "model").is_dir():
            print(f"{name}: {run} is not trained yet; skipped", flush=True)
            continue
        if name in done and not args.redo:
            print(f"{name}: reused", flush=True)
            continue
        results = evaluate_run(
            run,
            num_beams=args.num_beams,
            top_k=args.top_k,
            max_users=args.max_users,
            write_report=False,
            **options,
        )
        done[name] = {"run": RUNS[label], **summary(results)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(args.json)
        head = results["retrieval"]
        key = "hit@20" if options["protocol"] == "window" else "recall@20"
        print(
            f"{name}: retrieval {key} {head[key]:.4f} ({results['eval_seconds']:.0f} s)", flush=True
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
