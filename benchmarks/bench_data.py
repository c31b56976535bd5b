"""Time (and measure the memory of) loading + leave-one-out splitting in a fresh process.

Built-in data, each repeat a new Python process (imports included), run once with the
`datasets` Arrow cache cleared (cold) and then with it warm:

    python benchmarks/bench_data.py --dataset movielens-1m --repeats 3

A synthetic interaction log of any size, written as Parquet (one file, or `--shards K` files
in a folder) with an items file, loaded through `sid.data.load_split` — the path train.py
takes — in a fresh process per run; seconds and peak RSS per phase (read, id mapping,
sort/group, split) go to `--json`:

    python benchmarks/bench_data.py --rows 10000000 --users 100000 --items 100000 \
        --json /tmp/bench_data_10m.json

Peak RSS per phase: where the process's high-water mark (`getrusage` `ru_maxrss`) rose
during a phase, that mark is the phase's peak (exact); otherwise the phase stayed below an
earlier peak and its figure is the highest resident size a 10 ms sampler of
/proc/self/statm saw. The whole process's `ru_maxrss` is reported too. The machine's load
average is recorded, since the development machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import time, json
t0 = time.perf_counter()
from sid.data import load_builtin, leave_one_out
data = load_builtin({name!r})
split = leave_one_out(data)
print(json.dumps({{"seconds": time.perf_counter() - t0, "users": split.num_users}}))
"""

# Runs in a fresh process: the real loading path (`load_split`), with each phase timed from
# the DEBUG records `sid.data` emits and its resident memory sampled.
PHASE_CHILD = r"""
import json, logging, os, resource, sys, threading, time
t0 = time.perf_counter()
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

samples = []  # (time, rss)
stop = threading.Event()
def sample():
    while not stop.is_set():
        samples.append((time.perf_counter(), rss()))
        time.sleep(0.01)

marks = [("start", time.perf_counter(), maxrss(), 0.0, rss())]
class Phases(logging.Handler):
    def emit(self, record):
        if hasattr(record, "phase"):
            marks.append((record.phase, time.perf_counter(), maxrss(), record.seconds, rss()))

from sid.data import load_split
log = logging.getLogger("sid.data")
log.setLevel(logging.DEBUG)
log.addHandler(Phases())
log.propagate = False
import_seconds = time.perf_counter() - t0
marks[0] = ("start", time.perf_counter(), maxrss(), 0.0, rss())
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
data, split = load_split(json.loads(sys.argv[1]))
total = time.perf_counter() - start
stop.set()
phases = []
for prev, mark in zip(marks, marks[1:]):
    name, end, high, seconds, now = mark
    begin = end - seconds
    seen = [r for t, r in samples if begin <= t <= end] + [now]
    peak = high if high > prev[2] else max(seen)
    phases.append({
        "phase": name,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "exact": high > prev[2],
    })
print(json.dumps({
    "import_seconds": round(import_seconds, 3),
    "rss_after_import_mb": round(marks[0][2] / 2**20, 1),
    "load_split_seconds": round(total, 3),
    "phases": phases,
    "ru_maxrss_mb": round(maxrss() / 2**20, 1),
    "users": data.num_users,
    "items": data.num_items,
    "interactions": data.num_interactions,
    "kept_users": split.num_users,
    "train_interactions": int(split.train_items.shape[0]),
}))
"""


def run_once(name: str, cache: str) -> tuple[float, float]:
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


def builtin_main(args) -> None:
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


# ---------------------------------------------------------------------------------------------
# Synthetic logs


def generate(
    folder: Path,
    *,
    rows: int,
    users: int,
    items: int,
    shards: int,
    ids: str,
    seed: int,
) -> tuple[Path, Path]:
    """Write a synthetic log: interactions (user_id, item_id, timestamp, outcome, rating) in
    `shards` Parquet files (a folder) or one file, and items.parquet (item_id, text).

    Users are uniform, items Zipf-like (a few very popular), timestamps in minutes so that
    ties occur, rows in no particular order. Ids are strings ("u0000042", "i000042") or
    integers. Built with numpy and Arrow `take`, so no Python object per row.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if ids == "str":
        user_names = pa.array([f"u{u:07d}" for u in range(users)])
        item_names = pa.array([f"i{i:06d}" for i in range(items)])
    else:
        user_names = pa.array(np.arange(users, dtype=np.int64) + 1)
        item_names = pa.array(np.arange(items, dtype=np.int64) + 1)
    genres = ["action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller", "docs"]
    texts = pa.array(
        [
            f"Item {i} ({1950 + i % 70}) | {genres[i % 8]}, {genres[(i * 7) % 8]}"
            for i in range(items)
        ]
    )
    pq.write_table(pa.table({"item_id": item_names, "text": texts}), folder / "items.parquet")

    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(weights / weights.sum())
    perm = rng.permutation(items)  # popularity unrelated to id order
    outcomes = pa.array(["click", "save", "like", "watch"])
    if shards > 1:
        target = folder / "interactions"
        target.mkdir(exist_ok=True)
    else:
        target = folder / "interactions.parquet"
    bounds = np.linspace(0, rows, max(shards, 1) + 1).astype(np.int64)
    chunk = 1_000_000
    writer = None
    for k in range(max(shards, 1)):
        path = target / f"part-{k:05d}.parquet" if shards > 1 else target
        writer = None
        for lo in range(int(bounds[k]), int(bounds[k + 1]), chunk):
            n = min(chunk, int(bounds[k + 1]) - lo)
            u = rng.integers(0, users, n)
            i = perm[np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1)]
            t = 1_500_000_000 + 60 * rng.integers(0, 2_000_000, n)
            o = rng.choice(4, n, p=[0.6, 0.1, 0.2, 0.1])
            table = pa.table(
                {
                    "user_id": user_names.take(pa.array(u)),
                    "item_id": item_names.take(pa.array(i)),
                    "timestamp": pa.array(t, pa.int64()),
                    "outcome": outcomes.take(pa.array(o)),
                    "rating": pa.array(rng.integers(1, 6, n).astype(np.float64)),
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return target, folder / "items.parquet"


def measure(options: dict, cache: str) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=cache, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PHASE_CHILD, json.dumps(options)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"the measuring process failed (exit {out.returncode})")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_seconds"] = round(wall, 3)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def synthetic_main(args) -> None:
    made = args.data_dir is None
    folder = Path(args.data_dir or tempfile.mkdtemp(prefix="bench_data_"))
    spec = {
        "rows": args.rows,
        "users": args.users,
        "items": args.items,
        "shards": args.shards,
        "ids": args.ids,
        "seed": args.seed,
    }
    meta = folder / "spec.json"
    try:
        if meta.exists() and json.loads(meta.read_text()) == spec:
            name = "interactions" if args.shards > 1 else "interactions.parquet"
            inter, items = folder / name, folder / "items.parquet"
            generate_seconds = None
        else:
            start = time.perf_counter()
            inter, items = generate(folder, **spec)
            generate_seconds = round(time.perf_counter() - start, 2)
            meta.write_text(json.dumps(spec))
        options = {"dataset": str(inter), "items": str(items)}
        if args.outcome == "outcome":
            options["outcome_col"] = "outcome"
        elif args.outcome == "rating":
            options["rating_col"] = "rating"
        runs = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("cold", "warm") if args.warm else ("cold",):
                    load_before = [round(x, 2) for x in os.getloadavg()]
                    result = measure(options, cache)
                    result = {
                        "repeat": repeat,
                        "datasets_cache": state,
                        "load_average_before": load_before,
                        **result,
                    }
                    runs.append(result)
                    phases = ", ".join(
                        f"{p['phase']} {p['seconds']:.1f}s/{p['peak_rss_mb']:.0f}MB"
                        for p in result["phases"]
                    )
                    print(
                        f"run {repeat} ({state} cache): load_split "
                        f"{result['load_split_seconds']:.1f}s, process "
                        f"{result['process_wall_seconds']:.1f}s, peak RSS "
                        f"{result['ru_maxrss_mb']:.0f} MB; {phases}; "
                        f"load {result['load_average_before']}",
                        flush=True,
                    )
        data_bytes = sum(p.stat().st_size for p in folder.rglob("*.parquet"))
        report = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "spec": spec,
            "loader_options": {k: v for k, v in options.items() if k not in ("dataset", "items")},
            "parquet_mb": round(data_bytes / 2**20, 1),
            "generate_seconds": generate_seconds,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "runs": runs,
        }
        text = json.dumps(report, indent=2)
        if args.json:
            Path(args.json).write_text(text + "\n")
            print(f"wrote {args.json}")
        else:
            print(text)
    finally:
        if made and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="movielens-1m", help="built-in dataset")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 built-in, 1 synthetic")
    synthetic = parser.add_argument_group("synthetic Parquet log (given --rows)")
    synthetic.add_argument("--rows", type=int, default=None, help="interactions to generate")
    synthetic.add_argument("--users", type=int, default=100_000)
    synthetic.add_argument("--items", type=int, default=100_000)
    synthetic.add_argument("--shards", type=int, default=1, help=">1: a folder of part files")
    synthetic.add_argument("--ids", choices=["str", "int"], default="str")
    synthetic.add_argument(
        "--outcome",
        choices=["outcome", "rating", "none"],
        default="outcome",
        help="what the loader derives outcomes from",
    )
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--warm", action="store_true", help="also run with a warm cache")
    synthetic.add_argument(
        "--data_dir", default=None, help="keep the generated files here and reuse them"
    )
    synthetic.add_argument("--keep", action="store_true", help="keep the temporary data")
    synthetic.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args()
    if args.rows:
        args.repeats = args.repeats or 1
        synthetic_main(args)
    else:
        args.repeats = args.repeats or 3
        builtin_main(args)


if __name__ == "__main__":
    main()
