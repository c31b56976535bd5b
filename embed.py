"""Embed a catalogue's item texts once, over every process or GPU of a launch.

    python embed.py --dataset movielens-1m --output runs/ml1m-emb.safetensors
    python embed.py --items items.parquet --text_cols title,description --output emb.safetensors
    accelerate launch --num_processes 8 embed.py --items items.parquet --output emb.safetensors

Each process encodes a contiguous block of the items; the main process joins the blocks in
item order into one `.safetensors` file (with the item ids), which a training run then reads
instead of embedding again: `python train.py ... --embeddings emb.safetensors`. Several CPU
processes (no accelerator) are launched with `accelerate launch --multi_gpu --num_processes N`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parse(argv: list[str]) -> argparse.Namespace:
    from sid.data import BUILTIN_DATASETS
    from sid.embed import DEFAULT_EMBEDDING_MODEL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=BUILTIN_DATASETS, help="a built-in dataset")
    source.add_argument("--items", help="items file or folder (CSV/TSV/Parquet/JSON Lines)")
    p.add_argument("--items_item_col", default="item_id", help="item id column of --items")
    p.add_argument("--text_cols", default="text", help="text column(s), comma-separated")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--embedding_model", default=DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--device", default=None, help="default: each process's accelerator or cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(format="[sid] %(message)s")
    logging.getLogger("sid").setLevel(logging.INFO if main_process else logging.WARNING)
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    from sid.data import load_builtin, load_items
    from sid.embed import embed_items

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.dataset:
            data = load_builtin(args.dataset)
            ids, texts = data.item_ids, data.item_texts
        else:
            cols = [c.strip() for c in args.text_cols.split(",") if c.strip()]
            ids, texts = load_items(args.items, item_col=args.items_item_col, text_cols=cols)
        embed_items(
            texts,
            args.output,
            item_ids=ids,
            model=args.embedding_model,
            batch_size=args.batch_size,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
