"""benchmarks/bench_presets.py: the prior weight is picked on validation only, test is scored
with it and with the SID model alone, and the table averages the seeds of each preset."""

import json
import sys
from pathlib import Path

import pytest
from conftest import load_script, pipeline_options, write_cycle_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_presets.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH)


def stored(preset, seed, **metrics):
    """A stored evaluation with `metrics` (recall@10 …) on the retrieval and dense rows."""
    rows = {m: metrics.get(m, 0.0) for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")}
    return {
        "preset": preset,
        "seed": seed,
        "retrieval": dict(rows),
        "dense": dict(rows),
        "per_level_accuracy": {"teacher_forced": [0.5, 0.25], "beam": [0.75, 0.5]},
        "train_seconds": 600.0,
    }


def test_the_weight_is_the_best_on_validation_and_test_waits_for_the_whole_sweep(bench):
    done = {"a|valid|w=0": stored("p", 0, **{"ndcg@10": 0.10})}
    names = [n for n, _ in bench.plan("a", [0.0, 1.0, 2.0], done, 0)]
    assert names == ["a|valid|w=0", "a|valid|w=1", "a|valid|w=2"]  # no test before the sweep
    assert bench.chosen_weight(done, "a", [0.0, 1.0, 2.0]) is None
    done["a|valid|w=1"] = stored("p", 0, **{"ndcg@10": 0.30})
    done["a|valid|w=2"] = stored("p", 0, **{"ndcg@10": 0.20})
    assert bench.chosen_weight(done, "a", [0.0, 1.0, 2.0]) == 1.0
    plan = dict(bench.plan("a", [0.0, 1.0, 2.0], done, 50))
    assert plan["a|test|w=0"] == dict(split_name="test", prior_weight=0.0)
    assert plan["a|test|w=1"] == dict(split_name="test", prior_weight=1.0)
    assert plan["a|test-kept|w=1"]["exclude_history"] is False
    assert plan["a|curve|w=1"]["num_beams"] == plan["a|curve|w=1"]["top_k"] == 50
    assert all(o["split_name"] == "valid" for n, o in plan.items() if "|valid|" in n)
    # a tie goes to the smaller weight (0: no test row with a prior)
    done["a|valid|w=0"] = stored("p", 0, **{"ndcg@10": 0.30})
    assert bench.chosen_weight(done, "a", [0.0, 1.0, 2.0]) == 0.0
    assert "a|test|w=0" in dict(bench.plan("a", [0.0, 1.0, 2.0], done, 0))


def test_the_table_gives_the_mean_and_half_range_over_seeds(bench):
    done = {}
    for seed, (r0, r1) in enumerate([(0.20, 0.30), (0.24, 0.34)]):
        run = f"runs/x-s{seed}"
        done[f"{run}|valid|w=0"] = stored("x", seed, **{"ndcg@10": 0.1})
        done[f"{run}|valid|w=1"] = stored("x", seed, **{"ndcg@10": 0.2})
        done[f"{run}|test|w=0"] = {**stored("x", seed, **{"recall@10": r0}), "prior_weight": 0.0}
        done[f"{run}|test|w=1"] = {**stored("x", seed, **{"recall@10": r1}), "prior_weight": 1.0}
    table = bench.tables(done)
    beam = next(line for line in table.splitlines() if "| beam |" in line)
    prior = next(line for line in table.splitlines() if "| beam + dense prior |" in line)
    assert "`x` (2)" in beam and "0.2200 ± 0.0200" in beam
    assert "0.3200 ± 0.0200" in prior
    assert "TF 0.500 / 0.250; beam 0.750 / 0.500" in prior
    assert "prior weights chosen on validation 1, 1" in table


def test_end_to_end_on_a_trained_run(bench, tmp_path, monkeypatch):
    from sid.run import run_training

    run = run_training(
        *pipeline_options(write_cycle_dataset(tmp_path), tmp_path / "run", dense=True)
    )
    out = tmp_path / "bench.json"
    argv = [str(run), "--json", str(out), "--weights", "0,1", "--tune_users", "8"]
    argv += ["--num_beams", "6", "--top_k", "6", "--curve_beams", "8"]
    monkeypatch.setattr(sys, "argv", ["bench_presets.py", *argv])
    bench.main()
    done = json.loads(out.read_text())
    best = bench.chosen_weight(done, str(run), [0.0, 1.0])
    assert done[f"{run}|valid|w=0"]["users"] == 8
    assert done[f"{run}|valid|w=1"]["prior_weight"] == 1.0
    test = done[f"{run}|test|w=0"]
    assert test["split"] == "test" and test["exclude_history"] is True and test["users"] > 8
    assert done[f"{run}|test-kept|w={best:g}"]["exclude_history"] is False
    assert len(done[f"{run}|curve|w={best:g}"]["recall_curve"]["retrieval"]) == 8
    assert "`None`" not in bench.tables(done)
    bench.plot(done, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
