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
    assert plan["a|test|w=0"] == dict(split_name="test", prior_weight=0.0, rerank=False)
    assert plan["a|test|w=1"] == dict(split_name="test", prior_weight=1.0, rerank=False)
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
    # a row only one seed has says so
    done["runs/x-s0|test-kept|w=1"] = stored("x", 0, **{"recall@10": 0.1})
    kept = next(line for line in bench.tables(done).splitlines() if "| kept |" in line)
    assert kept.startswith("| `x` (1) | kept |")


def test_end_to_end_on_a_trained_run(bench, tmp_path, monkeypatch):
    from sid.run import run_training

    run = run_training(
        *pipeline_options(write_cycle_dataset(tmp_path), tmp_path / "run", dense=True)
    )
    out = tmp_path / "bench.json"
    argv = [str(run), "--json", str(out), "--weights", "0,1", "--tune_users", "8"]
    argv += ["--num_beams", "6", "--top_k", "6", "--curve_beams", "8", "--beam_weights", "0,0.5"]
    monkeypatch.setattr(sys, "argv", ["bench_presets.py", *argv])
    bench.main()
    done = json.loads(out.read_text())
    best = bench.chosen_weight(done, str(run), bench.weight_grid(done, str(run), [0.0, 1.0]))
    assert done[f"{run}|valid|w=0"]["users"] == 8
    assert done[f"{run}|valid|w=1"]["prior_weight"] == 1.0
    test = done[f"{run}|test|w=0"]
    assert test["split"] == "test" and test["exclude_history"] is True and test["users"] > 8
    assert done[f"{run}|test-kept|w={best:g}"]["exclude_history"] is False
    assert len(done[f"{run}|curve|w={best:g}"]["recall_curve"]["retrieval"]) == 8
    # the run has a ranking head: its beam weight picked on validation, then scored on test
    prior = json.loads((run / "config.json").read_text())["model"]["ranker_prior_weight"]
    bw = bench.chosen_beam_weight(done, str(run), [0.0, 0.5], prior)
    assert done[f"{run}|valid-rank@w={prior:g}|bw=0.5"]["beam_weight"] == 0.5
    ranked = done[f"{run}|test-rank@w={prior:g}|bw={bw:g}"]
    assert ranked["prior_weight"] == prior and "retrieval+ranking" in ranked
    assert "retrieval+ranking" not in test  # the rows without the head are not reranked
    shown = "beam + ranking head" if prior == 0 else "beam + dense prior + ranking head"
    assert f"| {shown} |" in bench.tables(done)
    assert "`None`" not in bench.tables(done)
    bench.plot(done, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    # a finished SASRec-CE record draws its test curve beside; one without a curve is refused
    sasrec = {"best_epoch": 3, "test": {"recall_curve": [0.1 * k for k in range(1, 9)]}}
    bench.plot(done, tmp_path / "with_sasrec.png", sasrec)
    assert (tmp_path / "with_sasrec.png").stat().st_size > 0
    with pytest.raises(ValueError, match="recall_curve"):
        bench.plot(done, tmp_path / "bad.png", {"test": {"history excluded": {}}})


def test_the_ranking_heads_beam_weight_is_picked_on_validation_after_the_prior(bench):
    scores = [(0, 0.1), (2, 0.2), (4, 0.15)]  # 4: the grid goes past the best weight
    done = {f"a|valid|w={w:g}": stored("p", 0, **{"ndcg@10": n}) for w, n in scores}
    names = [n for n, _ in bench.plan("a", [0.0, 2.0], done, 0, [0.0, 0.5])]
    assert names[-2:] == ["a|valid-rank@w=2|bw=0", "a|valid-rank@w=2|bw=0.5"]  # no test-rank yet
    opts = dict(bench.plan("a", [0.0, 2.0], done, 0, [0.0, 0.5]))
    assert opts["a|valid-rank@w=2|bw=0.5"] == dict(
        split_name="valid", beam_weight=0.5, tune=True, prior_weight=2.0, rerank=True
    )
    assert opts["a|test|w=2"]["rerank"] is False
    for bw, n in [(0.0, 0.3), (0.5, 0.25)]:
        done[f"a|valid-rank@w=2|bw={bw:g}"] = {
            "retrieval+ranking": {"ndcg@10": n},
            "prior_weight": 2,
        }
    opts = dict(bench.plan("a", [0.0, 2.0], done, 0, [0.0, 0.5]))
    assert opts["a|test-rank@w=2|bw=0"] == dict(
        split_name="test", beam_weight=0.0, prior_weight=2.0, rerank=True
    )
    # without a head: no ranking entries
    assert not any("rank" in n for n, _ in bench.plan("a", [0.0, 2.0], done, 0, None))
    done["a|test|w=0"] = {**stored("p", 0, **{"ndcg@10": 0.10}), "prior_weight": 0.0}
    done["a|test|w=2"] = {**stored("p", 0, **{"ndcg@10": 0.20}), "prior_weight": 2.0}
    done["a|test-rank@w=2|bw=0"] = {
        **stored("p", 0, **{"ndcg@10": 0.20}),
        "retrieval+ranking": {"recall@10": 0.3, "ndcg@10": 0.22, "recall@20": 0.4, "ndcg@20": 0.25},
        "beam_weight": 0.0,
        "prior_weight": 2.0,
    }
    table = bench.tables(done)
    row = next(line for line in table.splitlines() if "ranking head |" in line)
    assert "| 0.3000 | 0.2200 |" in row
    assert "NDCG@10 over its own beam +10.0%" in table
    # a head on the plain beam (trained on its lists) gets the row beside the beam alone
    for bw, n in [(0.0, 0.12), (0.5, 0.11)]:
        done[f"a|valid-rank@w=0|bw={bw:g}"] = {
            "retrieval+ranking": {"ndcg@10": n},
            "prior_weight": 0,
            "preset": "p",
        }
    for bw, n in [(0.0, 0.12), (0.5, 0.5)]:  # bw=0.5: not validation's pick, not shown
        done[f"a|test-rank@w=0|bw={bw:g}"] = {
            **stored("p", 0, **{"ndcg@10": 0.10}),
            "retrieval+ranking": {"recall@10": 0.2, "ndcg@10": n, "recall@20": 0.3, "ndcg@20": n},
            "beam_weight": bw,
            "prior_weight": 0.0,
        }
    table = bench.tables(done)
    row = next(line for line in table.splitlines() if "| beam + ranking head |" in line)
    assert "| 0.2000 | 0.1200 |" in row
    assert (
        "prior weight 0: beam weights chosen on validation 0, NDCG@10 over its own beam +20.0%"
        in table
    )


def test_the_prior_weight_grid_goes_past_validations_best(bench):
    def valid(*scores):
        return {f"a|valid|w={w:g}": stored("p", 0, **{"ndcg@10": n}) for w, n in scores}

    done = valid((0, 0.1), (1, 0.2), (2, 0.3))
    assert bench.weight_grid(done, "a", [0.0, 1.0, 2.0]) == [0.0, 1.0, 2.0, 4.0]
    names = [n for n, _ in bench.plan("a", [0.0, 1.0, 2.0], done, 0)]
    assert names[-1] == "a|valid|w=4" and not any("test" in n for n in names)  # 4 first
    done |= valid((4, 0.35), (8, 0.34))
    assert bench.weight_grid(done, "a", [0.0, 1.0, 2.0]) == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert bench.chosen_weight(done, "a", [0.0, 1.0, 2.0, 4.0, 8.0]) == 4.0
    done |= valid((16, 0.4))
    assert bench.weight_grid(done, "a", [16.0]) == [16.0]  # no further than MAX_PRIOR_WEIGHT
    # a head trained on the plain beam's lists ranks the plain beam, beside the prior's
    done = valid((0, 0.1), (1, 0.2), (2, 0.3), (4, 0.35), (8, 0.34))
    plan = dict(bench.plan("a", [0.0, 1.0, 2.0], done, 0, [0.0], rank_prior=0.0))
    assert plan["a|valid-rank@w=0|bw=0"]["prior_weight"] == 0.0
    assert "a|test|w=0" in plan and "a|test|w=4" in plan
    plan = dict(bench.plan("a", [0.0, 1.0, 2.0], done, 0, [0.0], rank_prior=1.0))
    assert plan["a|test|w=1"]["prior_weight"] == 1.0  # that beam's own test row
    # the table reads the test entries at the picked weight, not the last stored
    done = valid((0, 0.1), (2, 0.3), (4, 0.2))
    for w, r in [(0, 0.1), (2, 0.2), (4, 0.9)]:
        done[f"a|test|w={w}"] = {**stored("p", 0, **{"recall@10": r}), "prior_weight": float(w)}
    prior = next(line for line in bench.tables(done).splitlines() if "beam + dense prior |" in line)
    assert "| 0.2000 |" in prior


def test_an_ablation_arm_gets_its_own_label_and_rows(bench):
    from sid.run.arguments import PRESETS

    options = {
        "run": {"preset": "ml1m", "run_dir": "runs/anything", "threads": 2},
        "sid": {"codebook_sizes": PRESETS["ml1m"]["codebook_sizes"], "sid_tokenizer": "rqkmeans"},
        "model": {"prefixmem": False, "dense": True, "ranker": True, "ranker_steps": 7},
    }
    assert bench.preset_label(options) == "ml1m"  # ranker, paths and threads name no arm
    options["model"]["prefixmem"] = True
    options["sid"]["codebook_sizes"] = "64,64,64,64"
    assert bench.preset_label(options) == "ml1m + codebook_sizes=64,64,64,64 + prefixmem=True"
    assert bench.preset_label({"run": {"preset": None}}) is None
    # a training option that shapes the weights names an arm too; another seed does not
    training = {**bench._preset_training("ml1m"), "seed": 3, "output_dir": "runs/x/checkpoints"}
    stored_options = {"run": {"preset": "ml1m"}, "training_arguments": training}
    assert bench.preset_label(bench.arm(stored_options)) == "ml1m"
    training["label_smoothing_factor"] = 0.1
    assert bench.preset_label(bench.arm(stored_options)) == "ml1m + label_smoothing_factor=0.1"
    assert (
        bench.summary({"options": stored_options})["preset"] == "ml1m + label_smoothing_factor=0.1"
    )
    done = {
        "runs/a|test|w=0": {**stored("ml1m", 0, **{"recall@10": 0.2}), "prior_weight": 0.0},
        "runs/b|test|w=0": {
            **stored("ml1m + prefixmem=True", 0, **{"recall@10": 0.3}),
            "prior_weight": 0.0,
        },
    }
    table = bench.tables(done)
    assert "| `ml1m` (1) | excluded | beam | 0.2000" in table
    assert "| `ml1m + prefixmem=True` (1) | excluded | beam | 0.3000" in table


def test_a_stored_arm_is_labelled_against_the_presets_of_the_day(bench, tmp_path, monkeypatch):
    from sid.run import arguments

    off = {"run": {"preset": "ml1m"}, "model": {"prefixmem": False, "ranker_steps": 7}}
    on = {"run": {"preset": "ml1m"}, "model": {"prefixmem": True}}
    assert bench.arm(off)["model"] == {"prefixmem": False}  # the ranker names no arm
    done = {
        "runs/off|test|w=0": {**stored("ml1m", 0), "arm": bench.arm(off), "prior_weight": 0.0},
        "runs/on|test|w=0": {
            **stored("ml1m + prefixmem=True", 0),
            "arm": bench.arm(on),
            "prior_weight": 0.0,
        },
    }
    assert set(bench._by_preset(done)) == {"ml1m", "ml1m + prefixmem=True"}
    # the preset takes PrefixMem up: the run without it is the arm now, not the preset
    presets = {**arguments.PRESETS, "ml1m": {**arguments.PRESETS["ml1m"], "prefixmem": True}}
    monkeypatch.setattr(arguments, "PRESETS", presets)
    assert set(bench._by_preset(done)) == {"ml1m + prefixmem=False", "ml1m"}
    on_entry = bench._by_preset(done)["ml1m"]["runs/on"]
    assert on_entry["test0"] is on_entry["test"] is done["runs/on|test|w=0"]
    # entries benched before arms were stored get them from the run's options
    path = tmp_path / "presets.json"
    old = {k: {kk: vv for kk, vv in v.items() if kk != "arm"} for k, v in done.items()}
    path.write_text(json.dumps(old))
    after = bench.store_arm(path, "runs/on", on)
    assert after["runs/on|test|w=0"]["arm"] == bench.arm(on)
    assert "arm" not in after["runs/off|test|w=0"]
    assert json.loads(path.read_text()) == after


def test_the_large_preset_smooths_labels_and_runs_trained_without_are_an_arm(bench):
    from sid.run.arguments import PRESETS

    assert PRESETS["ml1m-large"]["label_smoothing_factor"] == 0.1
    assert "label_smoothing_factor" not in PRESETS["ml1m"]  # the 40-minute preset is unchanged
    training = {**bench._preset_training("ml1m-large"), "seed": 1}
    assert training["label_smoothing_factor"] == 0.1
    run = {"run": {"preset": "ml1m-large"}, "training_arguments": training}
    assert bench.preset_label(bench.arm(run)) == "ml1m-large"
    plain = {"run": {"preset": "ml1m-large"}, "training_arguments": {**training, "seed": 0}}
    plain["training_arguments"]["label_smoothing_factor"] = 0.0
    assert bench.preset_label(bench.arm(plain)) == "ml1m-large + label_smoothing_factor=0.0"


def test_benches_side_by_side_keep_each_others_entries(bench, tmp_path):
    import threading

    path = tmp_path / "results" / "presets.json"
    bench.store(path, "runs/a|valid|w=0", {"n": 0})
    path.write_text(json.dumps({**json.loads(path.read_text()), "runs/b|valid|w=0": {"n": 1}}))
    done = bench.store(path, "runs/a|valid|w=1", {"n": 2})  # re-read: b's entry survives
    assert set(done) == {"runs/a|valid|w=0", "runs/b|valid|w=0", "runs/a|valid|w=1"}

    def writer(run):
        for i in range(25):
            bench.store(path, f"{run}|test|w={i}", {"n": i})

    threads = [threading.Thread(target=writer, args=(run,)) for run in ("runs/c", "runs/d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads(path.read_text())) == 3 + 50


def test_a_retrained_ranking_head_is_evaluated_again(bench):
    assert bench.fresh("a|valid|w=0", {}, "k2")  # not a head's entry
    assert bench.fresh("a|valid-rank@w=0|bw=0", {"ranker_key": "k2"}, "k2")
    assert not bench.fresh("a|valid-rank@w=0|bw=0", {"ranker_key": "k1"}, "k2")
    assert not bench.fresh("a|test-rank@w=0|bw=0", {}, "k2")  # stored before keys were kept


def test_the_heads_identity_is_its_weights(bench, tmp_path):
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "model.safetensors").write_bytes(b"one")
    first = bench.head_key(str(tmp_path))
    assert first == bench.head_key(str(tmp_path))
    (tmp_path / "ranker" / "model.safetensors").write_bytes(b"two")
    assert bench.head_key(str(tmp_path)) != first
