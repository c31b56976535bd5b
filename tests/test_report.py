"""The evaluation report: protocol in words, plots written and embedded, rounded metrics.json,
old results dicts still render, stale reports are called stale."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from sid.report import (
    STALE_MARKER,
    compare_runs,
    mark_report_stale,
    markdown_report,
    report_is_stale,
    rounded,
    write_report_files,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEW_PLOTS = ["per_level_accuracy.png", "recall_at_k.png", "codebook_usage.png", "training_loss.png"]


def metrics(r10: float) -> dict:
    return {
        "recall@1": 0.1,
        "recall@5": 0.2,
        "recall@10": r10,
        "recall@20": 0.5,
        "ndcg@5": 0.15,
        "ndcg@10": 0.2,
        "ndcg@20": 0.25,
        "mrr": 0.125,
    }


def old_results(run: str = "runs/tiny") -> dict:
    """A results dict as evaluate_run wrote it before the report explained itself."""
    return {
        "run": run,
        "split": "test",
        "users": 4,
        "catalogue": 12,
        "num_beams": 5,
        "top_k": 5,
        "outcome": "like",
        "exclude_history": True,
        "beam_weight": None,
        "retrieval": metrics(0.25),
        "popularity": metrics(0.0),
        "per_level_accuracy": {"teacher_forced": [0.75, 0.5, 1.0], "beam": [1.0, 0.75, 0.5]},
        "validity": {
            "invalid_sid_rate": 0.0,
            "duplicate_rate": 0.0,
            "coverage@10": 0.5,
            "coverage@20": 0.75,
        },
        "latency": {
            "p50_ms": 12.5,
            "p95_ms": 20.0,
            "per_user_ms": 3.25,
            "users_per_s": 307.7,
            "batch_size": 4,
        },
        "codebook_health": {
            "num_items": 12,
            "codebook_sizes": [4, 4],
            "levels": [
                {"level": 0, "codebook_size": 4, "used_codes": 3, "utilisation": 0.75},
                {"level": 1, "codebook_size": 4, "used_codes": 4, "utilisation": 1.0},
            ],
            "collision_rate_before": 0.25,
            "collision_rate_after": 0.0,
        },
        "training": {"train_loss": 2.5, "global_step": 4, "train_seconds": 1.5},
    }


def new_results(run: str = "runs/tiny") -> dict:
    """The same run with every key the self-explaining report reads."""
    r = old_results(run)
    r["recall_curve"] = {
        "retrieval": [0.0, 0.25, 0.25, 0.5, 0.5],
        "popularity": [min(1.0, k / 12) for k in range(1, 13)],
    }
    r["per_level_accuracy"]["popularity"] = [0.25, 0.5, 1.0]
    r["codebook_usage"] = [[5, 4, 3, 0], [3, 3, 3, 3], [9, 3]]  # [L][codes]
    r["codebook_sizes"] = [4, 4]
    r["num_base_levels"] = 2
    r["data_summary"] = {
        "dataset": "tiny",
        "users": 4,
        "items": 12,
        "interactions": 40,
        "outcomes": {"like": 0.6, "watch": 0.4},
        "dropped_users": 0,
    }
    r["options"] = {
        "data": {"dataset": "tiny", "min_length": 3},
        "sid": {"sid_tokenizer": "rqkmeans", "codebook_sizes": "4,4"},
        "model": {"model": "tiny-llama", "prefixmem": False},
        "run": {"preset": None, "eval_users": 0},
        "training_arguments": {"learning_rate": 0.002, "seed": 0, "logging_steps": 20},
    }
    r["hardware"] = {"device": "cpu", "cpu_cores": 2, "torch": "2.x"}
    r["eval_seconds"] = 3.25
    r["model_fingerprint"] = "abc123"
    r["training"]["log_history"] = [
        {"step": 1, "epoch": 0.25, "loss": 3.0},
        {"step": 2, "epoch": 0.5, "loss": 2.5},
        {"step": 2, "eval_loss": 2.75},
        {"step": 4, "epoch": 1.0, "loss": 2.0},
        {"step": 4, "eval_loss": 2.25},
    ]
    return r


def test_report_states_the_protocol_in_words():
    text = markdown_report(new_results())
    assert "each user's **last** item (the test split)" in text
    assert "**excluded** from every ranking" in text
    assert "headline protocol of the published ML-1M figures" in text
    assert "`<like>`" in text
    assert "training interactions of all users" in text
    assert "leaving out each user's history items" in text
    assert "The last level (level 2) is the **collision level**" in text
    assert "items sharing the same base SID (levels 0–1)" in text
    assert "12 items" in text and "4 users" in text
    assert "Evaluated on cpu in 3.2 s" in text  # 3.25 → one decimal
    # the headline table comes before the per-level and latency sections
    assert text.index("## Ranking quality") < text.index("## Per-level SID accuracy")
    assert text.index("## Per-level SID accuracy") < text.index("## Latency")
    assert "| retrieval | 0.1000 | 0.2000 | 0.2500 | 0.5000 |" in text


def test_report_says_when_history_is_kept_and_the_validation_target():
    r = new_results()
    r["exclude_history"] = False
    r["split"] = "valid"
    text = markdown_report(r)
    assert "**second-to-last** item (the validation split)" in text
    assert "History items are **kept**" in text
    assert "not directly comparable" in text
    assert "the same list for every user" in text


def test_report_without_a_collision_level_says_so():
    r = new_results()
    r["num_base_levels"] = 3
    text = markdown_report(r)
    assert "no collision level" in text
    assert "(collision)" not in text


def test_per_level_table_has_popularity_row_and_collision_column():
    text = markdown_report(new_results())
    assert "| | level 0 | level 1 | level 2 (collision) |" in text
    assert "| teacher-forced | 0.7500 | 0.5000 | 1.0000 |" in text
    assert "| in top-5 beams | 1.0000 | 0.7500 | 0.5000 |" in text
    assert "| popularity guess | 0.2500 | 0.5000 | 1.0000 |" in text


def test_codebook_usage_table_counts_codes_and_perplexity():
    text = markdown_report(new_results())
    p = np.array([5, 4, 3]) / 12
    assert round(float(np.exp(-(p * np.log(p)).sum())), 2) == 2.94
    assert "| level 0 | 3 / 4 | 2.94 | 5 |" in text  # counts 5,4,3,0 of 12 items
    assert "| level 1 | 4 / 4 | 4 | 3 |" in text  # even use: perplexity = number of codes
    assert "| level 2 (collision) | 2 / 2 | 1.75 | 9 |" in text


def test_every_plot_is_written_and_embedded(tmp_path):
    written = write_report_files(tmp_path, new_results())
    assert written == ["metrics.json", *NEW_PLOTS, "report.md"]
    text = (tmp_path / "report.md").read_text()
    for name in NEW_PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in text, name
    assert not (tmp_path / "codebook_utilisation.png").exists()
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporary left behind
    assert "<details><summary>All options of the run</summary>" in text
    assert "| training_arguments.learning_rate | 0.002 |" in text
    assert "| training_arguments.logging_steps | 20 |" in text  # only in the full table
    assert "| outcomes | like 0.6, watch 0.4 |" in text
    assert "| model fingerprint | abc123 |" in text


def test_recall_curve_table_reads_the_curves_at_each_k():
    text = markdown_report(new_results())
    assert "| | @1 | @5 | @10 |" in text  # the longest curve has 12 entries: no @20
    assert "| retrieval | 0.0000 | 0.5000 | – |" in text  # beam curve stops at top_k
    assert "| popularity | 0.0833 | 0.4167 | 0.8333 |" in text


def test_metrics_json_rounds_float32_noise_and_keeps_ints(tmp_path):
    r = new_results()
    r["validity"]["coverage@10"] = float(np.float32(0.01))  # 0.009999999776482582
    r["latency"]["p50_ms"] = np.float32(12.345678)
    r["latency"]["users_per_s"] = float("inf")
    write_report_files(tmp_path, r)
    raw = (tmp_path / "metrics.json").read_text()
    assert "0.009999999776482582" not in raw
    saved = json.loads(raw)
    assert saved["validity"]["coverage@10"] == 0.01
    assert saved["latency"]["p50_ms"] == 12.3457
    assert saved["latency"]["users_per_s"] is None  # strict JSON: no Infinity
    assert saved["users"] == 4 and isinstance(saved["users"], int)
    assert saved["codebook_usage"] == [[5, 4, 3, 0], [3, 3, 3, 3], [9, 3]]
    assert saved["exclude_history"] is True
    assert rounded({"x": [1 / 3, 7, True]}) == {"x": [0.333333, 7, True]}


def test_old_results_without_new_keys_still_render(tmp_path):
    r = old_results()
    written = write_report_files(tmp_path, r)
    assert written == [
        "metrics.json",
        "per_level_accuracy.png",
        "codebook_utilisation.png",
        "report.md",
    ]
    text = (tmp_path / "report.md").read_text()
    assert "each user's **last** item" in text
    # the base sizes in codebook_health still say that level 2 is the collision level
    assert "The last level (level 2) is the **collision level**" in text
    assert "| teacher-forced | 0.7500 | 0.5000 | 1.0000 |" in text
    assert "popularity guess" not in text
    for absent in ["recall_at_k.png", "codebook_usage.png", "training_loss.png"]:
        assert absent not in text and not (tmp_path / absent).exists()
    for section in ["## Recall@K", "## Data", "## Options", "## Hardware"]:
        assert section not in text
    assert "![codebook utilisation](codebook_utilisation.png)" in text
    assert "| level 0 | 3 / 4 |" in text
    assert "| train_loss | 2.5 |" in text


def test_bare_results_render_without_codebooks_or_training():
    r = old_results()
    del r["codebook_health"], r["training"]
    text = markdown_report(r)
    assert "## Codebooks" not in text and "## Training" not in text
    assert "collision" not in text  # nothing says how many base levels there are
    assert "![per-level accuracy](per_level_accuracy.png)" in text


def make_run(root, name: str, *, reported: str | None, current: str | None, r10=0.25):
    run = root / name
    results = new_results(str(run))
    results["retrieval"]["recall@10"] = r10
    if reported is None:
        del results["model_fingerprint"]
    else:
        results["model_fingerprint"] = reported
    (run / "report").mkdir(parents=True)
    (run / "report" / "metrics.json").write_text(json.dumps(results))
    if current is not None:
        (run / "model").mkdir()
        (run / "model" / "sid_vocab.json").write_text(json.dumps({"model_fingerprint": current}))
    return run


def test_report_is_stale_when_the_model_was_retrained(tmp_path):
    fresh = make_run(tmp_path, "fresh", reported="abc", current="abc")
    retrained = make_run(tmp_path, "retrained", reported="abc", current="def")
    old = make_run(tmp_path, "old", reported=None, current="def")
    gone = make_run(tmp_path, "gone", reported="abc", current=None)
    assert report_is_stale(fresh) is None
    assert report_is_stale(old) is None  # no fingerprint recorded: nothing to compare
    assert report_is_stale(retrained) == (
        "stale: model retrained since this report: the report evaluated model abc, "
        "model/ now holds def"
    )
    assert report_is_stale(gone).startswith("stale: the model this report describes is gone")
    assert report_is_stale(tmp_path / "no_report") is None


def test_stale_marker_is_reported_and_cleared_by_a_new_report(tmp_path):
    run = make_run(tmp_path, "run", reported=None, current="abc")
    assert not mark_report_stale(tmp_path / "elsewhere")  # no report: no marker
    assert mark_report_stale(run, "model retrained at step 8")
    assert (run / "report" / STALE_MARKER).exists()
    assert report_is_stale(run) == (
        "stale: model retrained since this report: train.py left report/STALE "
        "(model retrained at step 8)"
    )
    write_report_files(run / "report", new_results(str(run)) | {"model_fingerprint": "abc"})
    assert not (run / "report" / STALE_MARKER).exists()
    assert report_is_stale(run) is None


def test_compare_runs_marks_stale_rows_side_by_side(tmp_path):
    a = make_run(tmp_path, "a", reported="abc", current="abc", r10=0.25)
    b = make_run(tmp_path, "b", reported="abc", current="xyz", r10=0.5)
    table = compare_runs([a, b, a])
    lines = table.splitlines()
    assert lines[0] == (
        "| | recall@10 | ndcg@10 | recall@20 | ndcg@20 | mrr | tf acc L0 | tf acc L1 | tf acc L2 |"
    )
    assert "| a (retrieval) | 0.2500 | 0.2000 | 0.5000 | 0.2500 | 0.1250 | 0.7500 |" in table
    assert "| b (retrieval) (stale: model retrained since this report) | 0.5000 |" in table
    assert table.count("a (retrieval)") == 1  # a run given twice is one row
    assert table.count("(popularity)") == 1  # one baseline: both runs share the data
    assert "| a (popularity) |" in table
    assert "- `b`: stale: model retrained since this report" in table
    assert "- `a`" not in table


def test_compare_runs_names_a_missing_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.py"):
        compare_runs([tmp_path / "nothing"])


def test_markdown_report_embeds_only_the_plots_named():
    r = copy.deepcopy(new_results())
    text = markdown_report(r, plots=["per_level_accuracy.png"])
    assert "](per_level_accuracy.png)" in text
    assert "](recall_at_k.png)" not in text and "](training_loss.png)" not in text
