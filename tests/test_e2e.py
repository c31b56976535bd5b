"""End-to-end runs on real data and real models. Slow: `python -m pytest -m slow`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import launch_processes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        check=True,
        text=True,
        capture_output=True,
        **kwargs,
    )


def test_quickstart_trains_and_beats_popularity(tmp_path):
    run_dir = tmp_path / "quick"
    out = run(["train.py", "--preset", "quickstart", "--run_dir", str(run_dir), "--ranker"])
    assert f"Run directory: {run_dir}" in out.stdout
    for artifact in [
        "config.json",
        "embeddings.safetensors",
        "tokenizer/config.json",
        "semantic_ids.json",
        "model/sid_vocab.json",
        "ranker/config.json",
    ]:
        assert (run_dir / artifact).exists(), artifact
    again = run(["train.py", "--preset", "quickstart", "--run_dir", str(run_dir), "--ranker"])
    assert "model: reused" in again.stdout  # every stage skipped on a re-run
    run(["eval.py", str(run_dir)])
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["validity"]["invalid_sid_rate"] == 0
    assert metrics["retrieval"]["recall@10"] > metrics["popularity"]["recall@10"]
    assert metrics["retrieval"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    assert (run_dir / "report" / "per_level_accuracy.png").exists()


def test_smollm2_fine_tunes_a_few_steps(tmp_path):
    run_dir = tmp_path / "smol"
    run(
        [
            "train.py",
            "--preset",
            "smollm2",
            "--run_dir",
            str(run_dir),
            "--max_steps",
            "3",
            "--save_steps",
            "3",
            "--eval_steps",
            "3",
        ]
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["global_step"] == 3


def test_two_process_cpu_training_with_accelerate(tmp_path):
    run_dir = tmp_path / "ddp"
    done = launch_processes(
        "train.py", "--preset", "quickstart", "--run_dir", run_dir,
        "--max_steps", 4, "--save_steps", 4, "--eval_steps", 4, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["global_step"] == 4
    assert config["training"]["processes"] == 2  # two ranks really trained together
