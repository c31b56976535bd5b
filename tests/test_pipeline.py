"""train.py → run directory → eval.py on a small custom dataset, in seconds."""

import json
import logging

import pytest
import torch
from conftest import pipeline_options, write_cycle_dataset

from sid.evaluation import evaluate_run
from sid.report import compare_runs
from sid.run import arguments_from_dict, run_training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_cycle_dataset(tmp_path_factory.mktemp("data"))


options = pipeline_options


def test_train_then_eval_writes_a_complete_run_and_report(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sid")
    run_dir = run_training(*options(dataset, tmp_path / "run"))
    for artifact in [
        "config.json",
        "stages.json",
        "embeddings.safetensors",
        "tokenizer/config.json",
        "semantic_ids.json",
        "prefixmem/config.json",
        "model/sid_vocab.json",
        "ranker/config.json",
    ]:
        assert (run_dir / artifact).exists(), artifact
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["global_step"] == 4
    assert config["codebook_health"]["collision_rate_after"] == 0
    caplog.clear()

    run_training(*options(dataset, tmp_path / "run"))  # a re-run reuses every stage
    out = caplog.text
    for stage in [
        "embeddings: reused",
        "semantic IDs: reused",
        "PrefixMem: reused",
        "model: reused",
        "ranking head: reused",
    ]:
        assert stage in out

    results = evaluate_run(run_dir, split_name="test", num_beams=10, top_k=10, batch_size=16)
    assert results["users"] == 40
    assert results["validity"]["invalid_sid_rate"] == 0
    assert results["validity"]["duplicate_rate"] == 0
    assert len(results["per_level_accuracy"]["teacher_forced"]) == 3  # 2 levels + collision
    assert "retrieval+ranking" in results
    for name in [
        "metrics.json",
        "report.md",
        "per_level_accuracy.png",
        "codebook_usage.png",
        "recall_at_k.png",
    ]:
        assert (run_dir / "report" / name).exists()
    assert "| retrieval |" in (run_dir / "report" / "report.md").read_text()
    table = compare_runs([run_dir, run_dir])
    assert table.count("run (retrieval)") == 1 and "recall@10" in table


def test_changing_the_tokenizer_retrains_only_what_depends_on_it(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sid")
    run_training(*options(dataset, tmp_path / "run", ranker=False, prefixmem=False))
    caplog.clear()
    with pytest.raises(ValueError, match="holds a model trained on SIDs with codebook sizes"):
        run_training(
            *options(
                dataset, tmp_path / "run", ranker=False, prefixmem=False, codebook_sizes="15,15"
            )
        )
    out = caplog.text
    assert "embeddings: reused" in out  # the embeddings did not depend on the tokenizer
    run_training(
        *options(
            dataset,
            tmp_path / "run",
            ranker=False,
            prefixmem=False,
            codebook_sizes="15,15",
            overwrite=True,
        )
    )
    saved = json.loads((tmp_path / "run" / "model" / "sid_vocab.json").read_text())
    assert saved["codebook_sizes"][:2] == [15, 15]


def test_bad_options_fail_before_any_work(dataset, tmp_path):
    with pytest.raises(ValueError, match="comma-separated integers"):
        run_training(*options(dataset, tmp_path / "r", codebook_sizes="4;4"))
    with pytest.raises(ValueError, match="pass --items"):
        run_training(*options(dataset, tmp_path / "r", items=None))
    with pytest.raises(ValueError, match="unknown option"):
        arguments_from_dict({"nope": 1})


def test_sid_fit_sample_fits_the_tokenizer_on_a_sample_and_encodes_every_item(
    dataset, tmp_path, monkeypatch, caplog
):
    from sid.codes import SemanticIDs
    from sid.tokenizers import RQKMeans

    fitted = []
    fit = RQKMeans.fit
    monkeypatch.setattr(RQKMeans, "fit", lambda self, x: (fitted.append(len(x)), fit(self, x))[1])
    options = dict(ranker=False, prefixmem=False, max_steps=1, codebook_sizes="8,8")
    caplog.set_level(logging.INFO, logger="sid")
    run = run_training(*pipeline_options(dataset, tmp_path / "r", sid_fit_sample=20, **options))
    assert fitted == [20]  # of the 30 items
    assert "fitted on 20 of 30 items" in caplog.text
    sids = SemanticIDs.load(run)
    assert len(sids) == 30 and len(set(map(tuple, sids.codes.tolist()))) == 30
    # another sample size is another tokenizer: refitted, not reused
    run_training(
        *pipeline_options(dataset, tmp_path / "r", sid_fit_sample=25, overwrite=True, **options)
    )
    assert fitted == [20, 25]
    with pytest.raises(ValueError, match="sid_fit_sample"):
        run_training(*pipeline_options(dataset, tmp_path / "bad", sid_fit_sample=-1, **options))


def test_load_best_model_at_end_keeps_the_best_validated_step(dataset, tmp_path):
    """--load_best_model_at_end: the weights and metrics saved are those of the step with the
    lowest validation loss, and config.json says which step that was."""
    from safetensors.torch import load_file

    run_dir = run_training(
        *options(
            dataset, tmp_path / "run", max_steps=8, save_steps=2, eval_steps=2,
            eval_strategy="steps", load_best_model_at_end=True,
            metric_for_best_model="eval_loss", learning_rate=0.5, ranker=False,
        )
    )  # fmt: skip
    training = json.loads((run_dir / "config.json").read_text())["training"]
    evals = {h["step"]: h["eval_loss"] for h in training["log_history"] if "eval_loss" in h}
    best = min(evals, key=evals.get)
    assert training["best_step"] == best and training["global_step"] == 8
    assert training["eval_loss"] == pytest.approx(evals[best])
    saved = load_file(run_dir / "model" / "model.safetensors")
    kept = load_file(run_dir / "checkpoints" / f"checkpoint-{best}" / "model.safetensors")
    common = sorted(set(saved) & set(kept))
    assert common
    for key in common:
        assert (saved[key] == kept[key]).all(), key


def test_ranker_lr_reaches_the_head_and_retrains_only_the_head(dataset, tmp_path, caplog):
    from safetensors.torch import load_file

    caplog.set_level(logging.INFO, logger="sid")
    common = dict(prefixmem=False, ranker_eval_every=0)  # keep the last step, not step 0
    run_dir = run_training(*options(dataset, tmp_path / "run", **common))
    before = load_file(run_dir / "ranker" / "model.safetensors")
    caplog.clear()
    run_training(*options(dataset, tmp_path / "run", ranker_lr=0.05, **common))
    assert "model: reused" in caplog.text and "ranking head: reused" not in caplog.text
    after = load_file(run_dir / "ranker" / "model.safetensors")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "a 50x learning rate left every weight of the head where it was"
    with pytest.raises(ValueError, match="--ranker_lr 0.0 is not allowed"):
        run_training(*options(dataset, tmp_path / "r", ranker_lr=0.0))


def test_tiny_config_sets_the_tiny_models_width_and_depth(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sid")
    wide = '{"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 2}'
    run_dir = run_training(*options(dataset, tmp_path / "run", ranker=False, tiny_config=wide))
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_hidden_layers"]) == (48, 3)
    assert (saved["num_attention_heads"], saved["num_key_value_heads"]) == (2, 2)
    pm = json.loads((run_dir / "prefixmem" / "config.json").read_text())
    assert pm["hidden_size"] == 48  # PrefixMem is built for the width the LM has
    caplog.clear()
    narrow = '{"hidden_size": 32, "num_hidden_layers": 1}'
    run_training(*options(dataset, tmp_path / "run", ranker=False, tiny_config=narrow))
    assert "semantic IDs: reused" in caplog.text and "model: reused" not in caplog.text
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_hidden_layers"]) == (32, 1)


@pytest.mark.parametrize(
    "value, message",
    [
        ("{hidden: 3}", "is not JSON"),
        ("[64]", "must be a JSON object"),
        ('{"hidden_sise": 64}', "'hidden_sise' is not a LlamaConfig setting"),
        ('{"vocab_size": 64}', "'vocab_size' is set by the toolkit"),
        ('{"num_hidden_layers": 0}', "num_hidden_layers must be an integer > 0"),
        ('{"hidden_size": "wide"}', "hidden_size must be a number"),
        ('{"hidden_size": 50}', "not a multiple of the number of attention heads"),
        ('{"num_key_value_heads": 3}', "num_attention_heads 4 must be a multiple of"),
    ],
)
def test_a_bad_tiny_config_fails_before_any_work(dataset, tmp_path, value, message):
    with pytest.raises(ValueError, match=f"--tiny_config .*{message}"):
        run_training(*options(dataset, tmp_path / "r", tiny_config=value))
    assert not (tmp_path / "r" / "embeddings.safetensors").exists()


def test_tiny_config_is_refused_for_another_model(dataset, tmp_path):
    with pytest.raises(ValueError, match="--tiny_config .* only with --model tiny"):
        run_training(
            *options(
                dataset, tmp_path / "r", model="smollm2-135m", tiny_config='{"hidden_size": 64}'
            )
        )
