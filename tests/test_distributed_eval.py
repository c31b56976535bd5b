"""Distributed evaluation: `accelerate launch` over 2 CPU processes (gloo) writes one report
whose metrics are those of one process — beam search, ranking head and dense head alike."""

import json
import math

import pytest
import torch
from conftest import launch_processes, pipeline_options, write_cycle_dataset

from sid.evaluation import evaluate_run, shard_batches
from sid.report import metrics_json

# 37 users in batches of 8: five batches, the last one short, split 3 + 2 over two processes
EVAL = dict(num_beams=10, top_k=10, batch_size=8, max_users=37)
# measured, not computed from the users: they differ between runs of any process count
TIMING = {"latency", "eval_seconds", "hardware", "num_processes"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sid.run import run_training

    root = tmp_path_factory.mktemp("distributed")
    data = write_cycle_dataset(root)
    # a ranking head and a dense head, so every row of the report is computed
    return run_training(
        *pipeline_options(
            data, root / "run", dense=True, max_steps=2, save_steps=2, eval_steps=2, ranker_steps=1
        )
    )


@pytest.mark.parametrize("num_users", [0, 1, 8, 37, 64, 65])
@pytest.mark.parametrize("num_processes", [1, 2, 3, 8])
def test_shards_hold_every_batch_once_in_order(num_users, num_processes):
    batches = list(range(0, num_users, 8))
    shards = [shard_batches(num_users, 8, num_processes, rank) for rank in range(num_processes)]
    assert [start for shard in shards for start in shard] == batches
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="process_index"):
        shard_batches(num_users, 8, num_processes, num_processes)


def assert_same_metrics(one, two, path="") -> None:
    """Every leaf of `one` and `two` (timings left out) equal; numbers within 1e-6."""
    if isinstance(one, dict):
        assert isinstance(two, dict) and set(one) - TIMING == set(two) - TIMING, path
        for key in set(one) - TIMING:
            assert_same_metrics(one[key], two[key], f"{path}/{key}")
    elif isinstance(one, list):
        assert isinstance(two, list) and len(one) == len(two), path
        for i, (a, b) in enumerate(zip(one, two, strict=True)):
            assert_same_metrics(a, b, f"{path}[{i}]")
    elif isinstance(one, (int, float)) and not isinstance(one, bool):
        assert isinstance(two, (int, float)) and math.isclose(one, two, rel_tol=0, abs_tol=1e-6), (
            f"{path}: {one} (1 process) != {two} (2 processes)"
        )
    else:
        assert one == two, path


def test_two_processes_write_one_report_with_one_process_metrics(run):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (OMP_NUM_THREADS=1)
    try:
        single = evaluate_run(run, write_report=False, **EVAL)
    finally:
        torch.set_num_threads(threads)
    assert single["num_processes"] == 1
    for kind in ("retrieval", "retrieval+ranking", "dense", "dense+beam", "popularity"):
        assert kind in single, kind
    options = [f"--{k}={v}" for k, v in EVAL.items()]
    done = launch_processes("eval.py", run, *options, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-4000:]
    report = run / "report"
    two = json.loads((report / "metrics.json").read_text())
    assert two["num_processes"] == two["hardware"]["num_processes"] == 2
    assert two["latency"]["num_processes"] == 2
    assert two["latency"]["batches"] == 5 and two["latency"]["users"] == 37
    assert two["latency"]["aggregate_users_per_s"] > 0
    assert "| num_processes | 2 |" in (report / "report.md").read_text()  # hardware table
    # the same numbers as one process, rounded as metrics.json rounds them
    assert_same_metrics(json.loads(metrics_json(single)), two)
    # the main process alone logs and prints
    assert done.stdout.count("Report: ") == 1 and done.stdout.count('"retrieval"') == 1
    assert done.stderr.count("evaluated 37 users") == 1
    assert done.stderr.count("evaluating ") == 1 and done.stderr.count("recommender: ") == 1
