"""Refused or broken runs never replace artifacts, and every bad input gets a clear error."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pipeline_options, write_cycle_dataset

from sid.artifacts import check_safetensors, strict_jsonable, write_json_atomic
from sid.codes import SemanticIDs
from sid.data import load_interactions, load_items
from sid.embed import load_item_embeddings
from sid.evaluation import evaluate_run
from sid.model import SIDRecModel, resolve_model_source
from sid.run import run_training

EVAL = dict(split_name="test", num_beams=6, top_k=6, batch_size=16, write_report=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_cycle_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """One finished run with PrefixMem and a ranking head; tests work on copies of it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_training(*pipeline_options(dataset, run, max_steps=2, save_steps=2, eval_steps=2))
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def digests(run: Path) -> dict[str, str]:
    """sha256 of every file of a run directory except training checkpoints."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "checkpoints" not in p.parts
    }


# ------------------------------------------------------------------------------ transactions


def test_refused_rerun_with_other_codebook_sizes_replaces_no_artifact(dataset, run_copy):
    before = digests(run_copy)
    with pytest.raises(ValueError, match="holds a model trained on SIDs with codebook sizes"):
        run_training(*pipeline_options(dataset, run_copy, codebook_sizes="15,15"))
    assert digests(run_copy) == before  # semantic_ids.json, codes, tokenizer weights untouched
    assert not list(run_copy.glob(".staging*"))
    results = evaluate_run(run_copy, **EVAL)  # still a consistent run
    assert results["validity"]["invalid_sid_rate"] == 0


def test_a_crash_during_training_leaves_the_run_as_it_was(dataset, run_copy, monkeypatch):
    import sid.training

    before = digests(run_copy)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in the middle of fine-tuning")

    monkeypatch.setattr(sid.training, "make_trainer", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(*pipeline_options(dataset, run_copy, codebook_sizes="15,15", overwrite=True))
    assert digests(run_copy) == before
    assert not list(run_copy.glob(".staging*"))


def test_overwrite_swaps_in_the_new_model_and_drops_its_stale_companions(dataset, run_copy):
    run_training(
        *pipeline_options(
            dataset, run_copy, codebook_sizes="15,15", overwrite=True, prefixmem=False, ranker=False
        )
    )
    assert not (run_copy / "prefixmem").exists() and not (run_copy / "ranker").exists()
    rec = SIDRecModel.from_pretrained(run_copy)
    assert rec.prefixmem is None and rec.sids.codebook_sizes[:2] == [15, 15]
    stages = json.loads((run_copy / "stages.json").read_text())
    assert "ranker" in stages  # the old fingerprint may stay: its artifact is gone, so not fresh


def test_eval_refuses_a_model_paired_with_other_sids_of_the_same_sizes(run_copy):
    sids = SemanticIDs.load(run_copy)
    swapped = sids.codes.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # two items trade SIDs: same sizes, other mapping
    SemanticIDs(
        item_ids=sids.item_ids,
        codes=swapped,
        codebook_sizes=sids.codebook_sizes,
        num_base_levels=sids.num_base_levels,
        policy=sids.policy,
    ).save(run_copy)
    with pytest.raises(ValueError, match="mixes artifacts of two runs"):
        evaluate_run(run_copy, **EVAL)


def test_eval_refuses_a_ranking_head_trained_for_another_model(run_copy):
    binding = run_copy / "ranker" / "trained_for.json"
    binding.write_text(json.dumps({"model_fingerprint": "0123456789abcdef"}))
    with pytest.raises(ValueError, match="retrain the head"):
        evaluate_run(run_copy, **EVAL)
    assert evaluate_run(run_copy, rerank=False, **EVAL)["users"] == 40


def test_config_json_is_strict_json(trained, tmp_path):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    config = json.loads((trained / "config.json").read_text(), parse_constant=refuse)
    assert config["training"]["global_step"] == 2
    write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse) == {
        "a": None,
        "b": [None, 1.5],
    }
    assert strict_jsonable(np.float32(2.0)) == 2.0


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sid")
    run_training(
        *pipeline_options(dataset, tmp_path / "r", prefixmem=False, ranker=False, resume=True)
    )
    out = caplog.text
    assert "--resume: no checkpoint in" in out and "training starts from step 0" in out


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("epochs", 0, "--num_train_epochs 0 is not allowed"),
        ("num_train_epochs", -1.0, "--num_train_epochs -1.0 is not allowed"),
        ("batch_size", 0, "--per_device_train_batch_size 0 is not allowed"),
        ("warmup", 1.5, "--warmup_steps 1.5 is not allowed"),
        ("output_dir", "elsewhere", "keeps checkpoints in RUN_DIR/checkpoints"),
        ("max_items", 1, "--max_items 1 is not allowed"),
        ("collision_policy", "drop", "choose one of suffix, reassign"),
    ],
)
def test_bad_options_are_refused_before_any_work(dataset, tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        run_training(*pipeline_options(dataset, tmp_path / "r", **{option: value}))
    assert not (tmp_path / "r").exists()  # refused before the run directory was made


def test_a_model_name_typo_offline_lists_the_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="Did you mean 'tiny'") as err:
        resolve_model_source("tinny")
    assert "smollm2-135m" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_local_model_path_is_named(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="model path ./no/such/model does not exist"):
        run_training(*pipeline_options(dataset, tmp_path / "r", model="./no/such/model"))


def test_pickle_only_model_folder_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle weights") as err:
        resolve_model_source(str(folder))
    assert "\n" not in str(err.value)


def test_truncated_model_safetensors_get_a_one_line_error(run_copy):
    weights = run_copy / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as err:
        SIDRecModel.from_pretrained(run_copy)
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)
    with pytest.raises(ValueError, match="truncated"):
        check_safetensors(weights)


def test_pickled_embeddings_are_never_loaded(tmp_path):
    ids = ["a", "b"]
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}, {"y": 2}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled object array"):
        load_item_embeddings(tmp_path / "obj.npy", ids)
    torch.save(torch.zeros(2, 4), tmp_path / "emb.pt")
    with pytest.raises(ValueError, match="never read"):
        load_item_embeddings(tmp_path / "emb.pt", ids)


def test_a_codebook_far_too_small_is_refused_and_a_tight_one_warns(dataset, tmp_path):
    with pytest.raises(ValueError, match="give 16 distinct SIDs for a catalogue of 30 items"):
        run_training(*pipeline_options(dataset, tmp_path / "r", codebook_sizes="4,4"))
    assert not (tmp_path / "r").exists()
    with pytest.warns(UserWarning, match="give only 64 distinct SIDs for 30 items"):
        run_training(
            *pipeline_options(
                dataset, tmp_path / "w", codebook_sizes="8,8", prefixmem=False, ranker=False
            )
        )


# ------------------------------------------------------------------------------ input files


def write_inter(
    tmp_path: Path, rows: list[str], name="inter.csv", header="user_id,item_id,timestamp"
) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


ITEMS = (["a", "b", "c"], ["A", "B", "C"])


@pytest.mark.parametrize(
    "value, shown",
    [("inf", "inf"), ("-inf", "-inf"), ("nan", "NaN"), ("1e30", "'1e30'")],
)
def test_non_finite_or_overflowing_timestamps_name_the_row(tmp_path, value, shown):
    path = write_inter(tmp_path, ["u1,a,1", "u1,b,2", f"u1,c,{value}"])
    with pytest.raises(ValueError) as err:
        load_interactions(path, items=ITEMS)
    message = str(err.value)
    assert str(path) in message and "'timestamp'" in message and "line 4" in message
    assert shown.lower() in message.lower()


def test_an_integer_timestamp_beyond_int64_is_refused(tmp_path):
    path = write_inter(tmp_path, ["u1,a,1", "u1,b,99999999999999999999", "u1,c,3"])
    with pytest.raises(ValueError, match=r"'99999999999999999999' at line 3, beyond the int64"):
        load_interactions(path, items=ITEMS)


def test_large_int64_timestamps_are_kept_exactly(tmp_path):
    big = 2**62 + 1  # not representable as float64
    path = write_inter(tmp_path, [f"u1,a,{big}", f"u1,b,{big + 1}", f"u1,c,{big + 2}"])
    data = load_interactions(path, items=ITEMS)
    assert data.timestamps.tolist() == [big, big + 1, big + 2]


def test_non_utf8_file_names_line_and_column(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes("item_id,text\na,Am\u00e9lie\n".encode() + b"b,Caf\xe9\n")
    with pytest.raises(
        ValueError, match=r"is not UTF-8: line 3, column 6 holds the byte\(s\) b'\\xe9'"
    ):
        load_items(path)


def test_ragged_csv_rows_name_the_line(tmp_path):
    path = write_inter(tmp_path, ["u1,a,1", "u1,b,2,extra", "u1,c,3"])
    with pytest.raises(ValueError, match="line 3 has 4 fields, the header has 3"):
        load_interactions(path, items=ITEMS)
    short = write_inter(tmp_path, ["u1,a,1", "u1,b", "u1,c,3"], name="short.csv")
    with pytest.raises(ValueError, match="line 3 has 2 fields, the header has 3"):
        load_interactions(short, items=ITEMS)
    tsv = tmp_path / "inter.tsv"
    tsv.write_text("user\titem\tts\nu1\ta\t1\n\nu1\tb\nu1\tc\t3\n")
    with pytest.raises(ValueError, match="line 4 has 2 fields, the header has 3"):
        load_interactions(tsv, items=ITEMS)


def test_rfc4180_quoted_commas_quotes_and_newlines_are_read(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,genres\n"
        'a,"Usual Suspects, The (1995)",Crime\n'
        'b,"He said ""hi"", twice","Drama, Comedy"\n'
        'c,"two\nlines",Horror\n'
    )
    ids, texts = load_items(path, text_cols=["title", "genres"])
    assert ids == ["a", "b", "c"]
    assert texts == [
        "Usual Suspects, The (1995) | Crime",
        'He said "hi", twice | Drama, Comedy',
        "two\nlines | Horror",
    ]


def test_tsv_keeps_quotes_verbatim(tmp_path):
    path = tmp_path / "items.tsv"
    path.write_text('item_id\ttext\na\t"Great Performances" Cats (1998)\n')
    assert load_items(path)[1] == ['"Great Performances" Cats (1998)']


def test_resume_from_a_truncated_checkpoint_fails_in_one_line(dataset, run_copy):
    stages = json.loads((run_copy / "stages.json").read_text())
    del stages["model"]  # the model must be retrained, from its checkpoint
    (run_copy / "stages.json").write_text(json.dumps(stages))
    weights = run_copy / "checkpoints" / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = digests(run_copy)
    options = pipeline_options(
        dataset, run_copy, max_steps=2, save_steps=2, eval_steps=2, resume=True
    )
    with pytest.raises(ValueError, match="checkpoint-2/model.safetensors is truncated"):
        run_training(*options)
    assert digests(run_copy) == before


def test_artifacts_get_the_usual_file_mode_not_tempfiles_0600(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    write_json_atomic(tmp_path / "c.json", {"a": 1})
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("target_window", [1, 3])
def test_resume_of_a_dense_run_restores_its_item_table_from_the_checkpoint(
    dataset, tmp_path, target_window
):
    from safetensors.torch import load_file

    run = tmp_path / "dense"
    options = dict(
        prefixmem=False,
        ranker=False,
        dense=True,
        max_steps=2,
        save_steps=2,
        target_window=target_window,
    )
    run_training(*pipeline_options(dataset, run, eval_steps=2, **options))
    table = load_file(str(run / "dense" / "model.safetensors"))["items"]
    lm = load_file(str(run / "model" / "model.safetensors"))
    # a crash after the checkpoint: the model stage must be trained again, from checkpoint-2
    stages = json.loads((run / "stages.json").read_text())
    del stages["model"]
    (run / "stages.json").write_text(json.dumps(stages))
    shutil.rmtree(run / "dense")
    run_training(*pipeline_options(dataset, run, eval_steps=2, resume=True, **options))
    # the checkpoint's wrapped embedding (item table included) came back, not a fresh init
    assert torch.equal(load_file(str(run / "dense" / "model.safetensors"))["items"], table)
    again = load_file(str(run / "model" / "model.safetensors"))
    assert again.keys() == lm.keys() and all(torch.equal(again[k], lm[k]) for k in lm)
    assert SIDRecModel.from_pretrained(run).dense is not None
