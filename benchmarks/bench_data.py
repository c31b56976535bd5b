"""Time loading + leave-one-out splitting of a built-in dataset in a fresh process.

    python benchmarks/bench_data.py --dataset movielens-1m --repeats 3

Each repeat is a new Python process (imports included), run once with the `datasets` Arrow
cache cleared (cold) and then with it warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import time, json
t0 = time.perf_counter()
from sid.data import load_builtin, leave_one_out
data = load_builtin({name!r})
split = leave_one_out(data)
print(json.dumps({{"seconds": time.perf_counter() - t0, "users": split.num_users}}))
"""


def run_once(name: str, cache: str) -> float:
    env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(name=name)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    inner = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return wall, inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="movielens-1m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold = run_once(args.dataset, cache)
            warm = run_once(args.dataset, cache)
        rows.append((cold, warm))
    for i, ((cw, ci), (ww, wi)) in enumerate(rows):
        print(
            f"run {i}: cold process {cw:.2f}s (load+split {ci:.2f}s); "
            f"warm cache process {ww:.2f}s (load+split {wi:.2f}s)"
        )
    worst = max(cw for (cw, _), _ in rows)
    print(f"worst fresh-process wall time: {worst:.2f}s")


if __name__ == "__main__":
    main()
