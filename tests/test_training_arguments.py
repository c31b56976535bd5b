"""train.py parses Hugging Face `TrainingArguments` itself: every Trainer option (gradient
checkpointing, FSDP, DeepSpeed, report_to, bf16 …) reaches the Trainer under its own name, with
the toolkit's defaults and short aliases, and a 2-process CPU run trains with checkpointing."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import transformers
from conftest import launch_processes, pipeline_options, write_cycle_dataset

from sid.run.arguments import ARGUMENT_CLASSES, PRESETS, RunArguments
from sid.run.stages import WEIGHT_OPTIONS, run_training
from sid.training import SIDTrainingArguments, resolve_aliases, training_arguments

ROOT = Path(__file__).resolve().parents[1]


def _train_script():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cycle_argv(dataset: Path, run_dir: Path) -> list[str]:
    return [
        *("--dataset", str(dataset / "inter.csv"), "--items", str(dataset / "items.csv")),
        *("--user_col", "user", "--item_col", "item", "--time_col", "ts"),
        *("--outcome_col", "action", "--text_cols", "title"),
        *("--embeddings", str(dataset / "emb.npy"), "--sid_tokenizer", "rqkmeans"),
        *("--codebook_sizes", "12,12", "--max_items", "6", "--max_steps", "2"),
        *("--batch_size", "8", "--save_steps", "2", "--eval_steps", "2", "--logging_steps", "1"),
        *("--prefixmem", "True", "--prefixmem_table_size", "64", "--prefixmem_head_dim", "4"),
        *("--run_dir", str(run_dir)),
    ]


def test_no_training_option_is_declared_twice():
    toolkit = {f.name for cls in ARGUMENT_CLASSES[:-1] for f in dataclasses.fields(cls)}
    engine = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert not toolkit & engine  # the engine's options exist once, in TrainingArguments
    assert ARGUMENT_CLASSES[-1] is SIDTrainingArguments
    assert issubclass(SIDTrainingArguments, transformers.TrainingArguments)
    assert {f.name for f in dataclasses.fields(RunArguments)} == {
        "run_dir", "preset", "eval_users", "resume", "overwrite", "threads"
    }  # fmt: skip
    # the presets speak the engine's names (parser.set_defaults needs the real field names)
    names = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    for preset in PRESETS.values():
        assert set(preset) <= names, set(preset) - names
    assert set(WEIGHT_OPTIONS) <= engine


def test_toolkit_defaults_and_aliases():
    args = training_arguments("out", lr=1e-3, epochs=3, batch_size=4, grad_accum=2, warmup=0.1)
    assert (args.learning_rate, args.num_train_epochs, args.gradient_accumulation_steps) == (
        1e-3,
        3,
        2,
    )
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 4
    assert args.warmup_steps == 0.1 and args.seed == args.data_seed == 0
    assert args.lr_scheduler_type.value == "cosine" and args.report_to in ("none", [])
    assert args.bf16 is False  # "where the GPU has it": no GPU here
    assert not args.remove_unused_columns and args.save_total_limit == 2
    with pytest.raises(ValueError, match="given twice"):
        resolve_aliases(SIDTrainingArguments, {"lr": 1e-3, "learning_rate": 1e-3})


def test_engine_options_reach_the_trainer(tmp_path, monkeypatch):
    dataset = write_cycle_dataset(tmp_path)
    run_dir = tmp_path / "run"
    argv = [
        *_cycle_argv(dataset, run_dir),
        *("--gradient_checkpointing", "True", "--report_to", "tensorboard"),
        *("--fsdp", "full_shard auto_wrap", "--fsdp_config", '{"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}'),
        *("--bf16", "True", "--use_cpu", "True", "--optim", "adamw_torch", "--lr", "1e-3"),
        *("--label_smoothing_factor", "0.1", "--max_grad_norm", "0.5"),
    ]  # fmt: skip
    parsed = _train_script().parse(argv)

    class Reached(Exception):
        pass

    seen = {}

    def trainer_init(self, *args, **kwargs):
        seen["args"] = kwargs["args"]
        raise Reached

    monkeypatch.setattr(transformers.Trainer, "__init__", trainer_init)
    with pytest.raises(Reached):
        run_training(*parsed)
    got = seen["args"]
    assert got is parsed[-1]
    assert got.activation_checkpointing  # --gradient_checkpointing is its (deprecated) alias
    assert got.report_to == ["tensorboard"]
    assert got.fsdp and got.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert got.bf16 and got.use_cpu and got.optim.value == "adamw_torch"
    assert (got.learning_rate, got.label_smoothing_factor, got.max_grad_norm) == (1e-3, 0.1, 0.5)
    assert Path(got.output_dir) == run_dir / "checkpoints"


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is not None, reason="checks the no-deepspeed path"
)
def test_deepspeed_reaches_training_arguments(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    argv = [*_cycle_argv(tmp_path, tmp_path / "run"), "--deepspeed", str(config)]
    with pytest.raises(Exception, match="deepspeed"):  # TrainingArguments' own check
        _train_script().parse(argv)


def test_a_weight_option_retrains_and_a_logging_option_does_not(tmp_path):
    dataset = write_cycle_dataset(tmp_path)
    run_dir = tmp_path / "run"
    opts = dict(ranker=False, max_steps=2, save_steps=2, eval_steps=2)
    run_training(*pipeline_options(dataset, run_dir, **opts))
    before = json.loads((run_dir / "stages.json").read_text())["model"]
    run_training(*pipeline_options(dataset, run_dir, logging_steps=1, report_to="none", **opts))
    assert json.loads((run_dir / "stages.json").read_text())["model"] == before
    run_training(*pipeline_options(dataset, run_dir, label_smoothing_factor=0.1, **opts))
    after = json.loads((run_dir / "stages.json").read_text())["model"]
    assert after != before
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training_arguments"]["label_smoothing_factor"] == 0.1


def test_two_cpu_processes_train_with_gradient_checkpointing_and_a_target_window(tmp_path):
    dataset = write_cycle_dataset(tmp_path)
    run_dir = tmp_path / "run"
    argv = [*_cycle_argv(dataset, run_dir), "--dense", "True", "--gradient_checkpointing", "True"]
    argv += ["--target_window", "3"]  # future-window targets through the DDP-wrapped model
    done = launch_processes("train.py", *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads((run_dir / "config.json").read_text())["training"]
    assert training["global_step"] == 2 and training["processes"] == 2
    assert training["gradient_checkpointing"] is True
    assert not list(run_dir.glob(".staging-rank*"))  # both ranks cleaned up
