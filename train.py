"""Train a generative recommender: data → embeddings → SID tokenizer → (PrefixMem) → LM → run dir.

    python train.py --preset quickstart
    python train.py --dataset movielens-1m --model smollm2-135m --run_dir runs/ml1m-smollm2
    accelerate launch train.py --preset ml1m          # several GPUs/processes, same code

Every option: python train.py --help
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse(argv: list[str]):
    import argparse

    from transformers import HfArgumentParser

    from sid.run import ARGUMENT_CLASSES, PRESETS

    parser = HfArgumentParser(
        ARGUMENT_CLASSES, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    preset = None
    if "--preset" in argv:
        preset = (
            argv[argv.index("--preset") + 1] if argv.index("--preset") + 1 < len(argv) else None
        )
    elif any(a.startswith("--preset=") for a in argv):
        preset = next(a.split("=", 1)[1] for a in argv if a.startswith("--preset="))
    if preset is not None:
        if preset not in PRESETS:
            parser.error(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        parser.set_defaults(**PRESETS[preset])  # explicit flags still win
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    import logging

    from sid.run import run_training

    logging.basicConfig(format="[sid] %(message)s")
    logging.getLogger("sid").setLevel(logging.INFO)
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        run_dir = run_training(*args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"Run directory: {run_dir}")
    print(f"Evaluate it with: python eval.py {run_dir}")


if __name__ == "__main__":
    main()
