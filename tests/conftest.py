"""Helpers shared by the tests: word-level tokenizers, tiny Llamas and random unique SIDs."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from sid.codes import SemanticIDs
from sid.model import tiny_config


def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over `words` (which hold <pad>, <unk> and maybe <s>)."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>" if "<s>" in words else None,
    )


def tiny_llama(vocab_size: int, *, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A seeded random Llama in eval mode: `sid.model.tiny_config`, smaller, with LlamaConfig's
    default special-token ids and untied embeddings unless `overrides` say otherwise."""
    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(vocab_size, **settings)).eval()


def random_codes(n: int, sizes: Sequence[int], seed: int) -> torch.Tensor:
    """n distinct random code rows LongTensor [n, L] with codes[:, l] < sizes[l]."""
    g = torch.Generator().manual_seed(seed)
    total = 1
    for k in sizes:
        total *= k
    flat = torch.randperm(total, generator=g)[:n]
    codes = []
    for k in reversed(sizes):
        codes.append(flat % k)
        flat = flat // k
    return torch.stack(codes[::-1], 1)


def unique_semantic_ids(codes: torch.Tensor, sizes: Sequence[int]) -> SemanticIDs:
    """SemanticIDs of unique `codes` with no collision level, so its SIDs are exactly `codes`."""
    n = len(codes)
    sids = SemanticIDs.from_codes(
        codes,
        [str(i) for i in range(n)],
        codebook_sizes=list(sizes),
        policy="reassign",
        distances=torch.zeros(n, sizes[-1]),
        collision_level=False,
    )
    assert torch.equal(sids.codes, codes)
    return sids


def write_cycle_dataset(folder: Path) -> Path:
    """40 users walking a 30-item catalogue in a cycle, in `folder`: inter.csv (user, item, ts,
    action), items.csv (item_id, title) and item vectors emb.npy [30, 16]."""
    n_items, n_users, length = 30, 40, 12
    rng = np.random.default_rng(0)
    (folder / "items.csv").write_text(
        "item_id,title\n" + "".join(f"m{i},movie {i}\n" for i in range(n_items))
    )
    rows = ["user,item,ts,action"]
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(length):
            item = (start + t) % n_items
            rows.append(f"u{u},m{item},{t},{'save' if item % 3 == 0 else 'click'}")
    (folder / "inter.csv").write_text("\n".join(rows) + "\n")
    np.save(folder / "emb.npy", rng.normal(size=(n_items, 16)).astype(np.float32))
    return folder


def pipeline_options(dataset: Path, run_dir: Path, **extra):
    """The four argument dataclasses of a seconds-long train.py run on `write_cycle_dataset`."""
    from sid.run import arguments_from_dict

    values = dict(
        dataset=str(dataset / "inter.csv"),
        items=str(dataset / "items.csv"),
        user_col="user",
        item_col="item",
        time_col="ts",
        outcome_col="action",
        text_cols="title",
        embeddings=str(dataset / "emb.npy"),
        sid_tokenizer="rqkmeans",
        codebook_sizes="12,12",
        model="tiny",
        max_items=6,
        max_steps=4,
        batch_size=8,
        save_steps=4,
        eval_steps=4,
        logging_steps=2,
        prefixmem=True,
        prefixmem_table_size=64,
        prefixmem_head_dim=4,
        ranker=True,
        ranker_steps=3,
        run_dir=str(run_dir),
    )
    values.update(extra)
    return arguments_from_dict(values)


def launch_processes(script: str, *argv: str, num_processes: int = 2, timeout: int = 300):
    """`accelerate launch` `script` (a file of the repository root) over `num_processes` local
    processes; returns the CompletedProcess (text output captured).

    `--multi_gpu` is torchrun's launcher: on a machine without an accelerator the ranks join a
    gloo group on the CPU (accelerate's `--cpu` alone starts one process unless MPI is there).
    One torch thread per process, no GPU, a free port, the hub offline."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", str(num_processes), "--num_machines", "1"]
    launch += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    return subprocess.run(
        [*launch, script, *map(str, argv)],
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""),
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def load_script(path: Path):
    """A script of the checkout (a benchmark, train.py …) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
