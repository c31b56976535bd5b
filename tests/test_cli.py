"""train.py and eval.py speak one argument style: HfArgumentParser dataclasses, every default
shown by --help and taken from the one place it lives; run directories are locked and stale
reports are marked."""

import dataclasses
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest
from conftest import pipeline_options, write_cycle_dataset

from prefixmem.memory import PrefixMemConfig
from sid.data import leave_one_out, load_data
from sid.evaluation import evaluate_run
from sid.ranking_training import train_ranker
from sid.report import STALE_MARKER, report_is_stale
from sid.run.arguments import (
    DataArguments,
    EvalArguments,
    ModelArguments,
    SIDArguments,
    library_default,
    parse_sizes,
)
from sid.run.rundir import RunDir
from sid.run.stages import run_training
from sid.tokenizers.rqvae import RQVAE

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help(name: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        _script(name).parse(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _option_help(text: str, option: str) -> str:
    """The help paragraph of `option` in an argparse --help text, on one line."""
    match = re.search(rf"^  {re.escape(option)}\b(.*?)(?=^  -|\Z)", text, re.S | re.M)
    assert match, f"{option} missing from --help"
    return " ".join(match.group(1).split())


def test_train_help_shows_every_default_and_reads_booleans_as_true_false(capsys):
    text = _help("train", ["--help"], capsys)
    for option, default in [
        ("--codebook_sizes", "auto"),
        ("--seed", "0"),
        ("--user_col", "user_id"),
        ("--item_col", "item_id"),
        ("--time_col", "timestamp"),
        ("--sid_epochs", str(library_default(RQVAE, "epochs"))),
        ("--prefixmem", "False"),
    ]:
        assert f"(default: {default})" in _option_help(text, option), option
    assert "[PREFIXMEM]" not in text and "[DENSE]" not in text
    assert "--prefixmem [True|False]" in text
    # the --no_X twin of a True-default flag says what it is, not X's help again
    assert _option_help(text, "--no_ranker_features") == (
        "--no-ranker_features Same as --ranker_features False."
    ) or "Same as --ranker_features False." in _option_help(text, "--no_ranker_features")


def test_a_preset_help_shows_the_presets_values(capsys):
    text = _help("train", ["--preset", "ml1m", "--help"], capsys)
    assert "(default: movielens-1m)" in _option_help(text, "--dataset")
    assert "(default: 256,256,256)" in _option_help(text, "--codebook_sizes")


def test_eval_help_shows_defaults_and_takes_the_run_as_first_argument(capsys):
    text = _help("eval", ["--help"], capsys)
    for option in ("--split", "--num_beams", "--top_k", "--batch_size", "--beam_weight"):
        assert "(default: " in _option_help(text, option), option
    assert "--keep_history [True|False]" in text
    args = _script("eval").parse(["runs/x", "--num_beams", "30", "--keep_history"])
    assert (args.run_dir, args.num_beams, args.keep_history) == ("runs/x", 30, True)
    assert _script("eval").parse(["runs/x", "--rerank", "False"]).rerank is False


def test_each_default_has_one_source():
    """The CLI's defaults are the library's: eval's are evaluate_run's, the pipeline's are
    those of the functions and configs the options are passed to."""
    ev = inspect.signature(evaluate_run).parameters
    e = EvalArguments()
    assert (e.split, e.num_beams, e.top_k, e.batch_size) == (
        ev["split_name"].default,
        ev["num_beams"].default,
        ev["top_k"].default,
        ev["batch_size"].default,
    )
    assert e.beam_weight == ev["beam_weight"].default
    assert e.dense_beam_weight == ev["dense_beam_weight"].default
    assert e.keep_history is (not ev["exclude_history"].default)
    tr = inspect.signature(train_ranker).parameters
    m = ModelArguments()
    assert m.ranker_beam_negatives == tr["n_beam_negatives"].default
    assert m.ranker_random_negatives == tr["n_random_negatives"].default
    assert m.ranker_steps == tr["steps"].default
    pm = {f.name: f.default for f in dataclasses.fields(PrefixMemConfig)}
    assert (m.prefixmem_table_size, m.prefixmem_head_dim) == (pm["table_size"], pm["head_dim"])
    assert SIDArguments().sid_epochs == inspect.signature(RQVAE).parameters["epochs"].default
    d = DataArguments()
    data_params = inspect.signature(load_data).parameters
    for name in ("user_col", "item_col", "items_item_col", "time_col", "unknown_items"):
        assert getattr(d, name) == data_params[name].default, name
    assert d.min_length == inspect.signature(leave_one_out).parameters["min_length"].default


def test_auto_codebook_sizes_follow_the_catalogue():
    assert parse_sizes("auto", num_items=200) == [64, 64, 64]
    assert parse_sizes("auto", num_items=3706) == [256, 256, 256]
    assert parse_sizes("auto", num_items=40) == [16, 16, 16]
    assert parse_sizes("12,8") == [12, 8]
    with pytest.raises(ValueError, match="--codebook_sizes"):
        parse_sizes("12;8")


def test_a_codebook_larger_than_the_catalogue_names_the_flag(tmp_path):
    dataset = write_cycle_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"--codebook_sizes 64,64: .*--codebook_sizes 30,30"):
        run_training(*pipeline_options(dataset, tmp_path / "run", codebook_sizes="64,64"))
    assert not (tmp_path / "run" / "model").exists()


def test_a_second_writer_of_the_same_run_directory_is_refused(tmp_path):
    first = RunDir(tmp_path / "run")
    try:
        with pytest.raises(ValueError, match="being written by another train.py .*pid"):
            RunDir(tmp_path / "run")
    finally:
        first.close()
    RunDir(tmp_path / "run").close()  # free again once the first writer is done


def test_retraining_marks_the_old_report_stale_and_eval_clears_it(tmp_path):
    dataset = write_cycle_dataset(tmp_path)
    opts = dict(ranker=False, prefixmem=False)
    run_dir = run_training(*pipeline_options(dataset, tmp_path / "run", **opts))
    evaluate_run(run_dir, num_beams=5, top_k=5, batch_size=16)
    assert not (run_dir / "report" / STALE_MARKER).exists()
    run_training(*pipeline_options(dataset, tmp_path / "run", max_steps=2, **opts))
    marker = run_dir / "report" / STALE_MARKER
    assert marker.exists() and "retrained" in marker.read_text()
    assert "stale" in report_is_stale(run_dir)
    evaluate_run(run_dir, num_beams=5, top_k=5, batch_size=16)
    assert not marker.exists() and report_is_stale(run_dir) is None


def test_default_codebook_sizes_fit_a_small_own_catalogue(tmp_path):
    """README's own-data command with no --codebook_sizes: the levels follow the catalogue
    (30 items → 8 codes per level) instead of refusing the 256-code default."""
    dataset = write_cycle_dataset(tmp_path)
    run_dir = run_training(
        *pipeline_options(
            dataset, tmp_path / "run", codebook_sizes="auto", ranker=False, prefixmem=False
        )
    )
    config = json.loads((run_dir / "semantic_ids.json").read_text())
    assert config["codebook_sizes"][:3] == [8, 8, 8]
