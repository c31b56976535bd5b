"""The README's quick start, end to end, as a user runs it: train.py then eval.py in fresh
processes, repeated, with wall times and test metrics; the README's figures come from here.

    HF_HUB_OFFLINE=1 python benchmarks/bench_quickstart.py --seeds 0 0 1 --out runs/bench-quickstart.json

Each repeat trains into a new run directory (`--root/seed<S>-<i>`), so nothing is reused but
the embedding cache (`$SID_CACHE` or ~/.cache/sid-genrec; `--cold_cache` points it at an
empty folder so the MiniLM pass is timed too). Repeating a seed checks that a run reproduces;
different seeds give the spread a reader should expect.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("retrieval", "popularity")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 0, 1])
    parser.add_argument("--root", default="runs/bench-quickstart")
    parser.add_argument("--cold_cache", action="store_true", help="Time the embedding pass too.")
    parser.add_argument("--out", default=None, help="Write every repeat and the summary here.")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cache = None
    if args.cold_cache:
        cache = tempfile.mkdtemp(prefix="sid-cache-")
        env["SID_CACHE"] = cache
    repeats = []
    for i, seed in enumerate(args.seeds):
        run_dir = Path(args.root) / f"seed{seed}-{i}"
        shutil.rmtree(ROOT / run_dir, ignore_errors=True)
        train = [sys.executable, "train.py", "--preset", "quickstart", "--run_dir", str(run_dir)]
        train_s = timed([*train, "--seed", str(seed)], env)
        eval_s = timed([sys.executable, "eval.py", str(run_dir)], env)
        metrics = json.loads((ROOT / run_dir / "report" / "metrics.json").read_text())
        row = {
            "seed": seed,
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1),
            **{f"{r} {m}": metrics[r][m] for r in ROWS for m in METRICS},
            "invalid_sid_rate": metrics["validity"]["invalid_sid_rate"],
        }
        repeats.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for key in repeats[0]:
        if key == "seed":
            continue
        values = [r[key] for r in repeats]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        summary[key] = {"mean": statistics.fmean(values), "std": spread, "min": min(values)}
        summary[key]["max"] = max(values)
    print("\n| figure | mean | std | min | max |\n|---|---|---|---|---|")
    for key, s in summary.items():
        print(f"| {key} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"repeats": repeats, "summary": summary}, indent=1))
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
