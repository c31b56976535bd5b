r"""Train a generative recommender: data → embeddings → SID tokenizer → (PrefixMem) → LM → run dir.

    python train.py --preset quickstart
    python train.py --dataset movielens-1m --model smollm2-135m --run_dir runs/ml1m-smollm2
    python train.py --dataset inter.csv --items items.csv --user_col user --item_col item \
        --time_col ts --text_cols title,genres --run_dir runs/mine
    accelerate launch train.py --preset ml1m          # several GPUs, same code
    accelerate launch --multi_gpu --num_processes 2 train.py --preset quickstart  # 2 CPU ranks

Every option of Hugging Face's TrainingArguments is a flag of its own (--gradient_checkpointing,
--fsdp/--fsdp_config, --deepspeed, --report_to, --bf16, --optim, --label_smoothing_factor …),
with this toolkit's defaults; --epochs, --lr, --batch_size, --grad_accum, --warmup are short
names for --num_train_epochs, --learning_rate, --per_device_train_batch_size,
--gradient_accumulation_steps, --warmup_steps.

Own data: the interactions file needs the columns named by --user_col, --item_col and
--time_col (defaults below); the items file --items_item_col and --text_cols. A preset sets
defaults; flags given beside it still win, and `--preset NAME --help` shows its values.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _preset_name(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--preset":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: list[str]):
    from sid.run.arguments import ARGUMENT_CLASSES, PRESETS, make_parser

    parser = make_parser(ARGUMENT_CLASSES, description=__doc__)
    preset = _preset_name(argv)
    if preset is not None:
        if preset not in PRESETS:
            parser.error(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        parser.set_defaults(**PRESETS[preset])  # explicit flags still win
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="[sid] %(message)s")
    logging.getLogger("sid").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file save/load bars; the stages keep their own
    args = parse(sys.argv[1:] if argv is None else argv)

    from sid.run.stages import run_training

    try:
        run_dir = run_training(*args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"Run directory: {run_dir}")
    print(f"Evaluate it with: python eval.py {run_dir}")


if __name__ == "__main__":
    main()
