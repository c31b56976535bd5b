"""Atomic ``config.json`` + ``model.safetensors`` artifact directories, written and read in one place.

SID tokenizers, :class:`prefixmem.PrefixMem` and :class:`sid.ranking.RankingHead` all save
themselves Hugging Face style: a directory holding a JSON config and a safetensors weight file.
:func:`save_artifact` writes such a directory atomically; :func:`load_artifact` reads it back with
errors that name the missing or broken file and what the directory should have been.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_artifact(
    directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` atomically.

    Everything is written into a sibling ``dir.tmp-XXXX`` and renamed into place, so a crash
    leaves either the old artifact or the new one, never half of one.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt"},  # what transformers' loaders expect to find
        )
        if target.exists():
            # os.replace cannot swap a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_artifact(
    directory: str | os.PathLike,
    *,
    what: str,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read the ``(config, tensors)`` that :func:`save_artifact` wrote into ``directory``.

    ``what`` describes the expected directory (e.g. ``"a PrefixMem directory written by
    save_pretrained"``) and goes into the FileNotFoundError for a missing file. Invalid JSON or
    an unreadable safetensors file raises ValueError naming the file.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: expected {what}, holding {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); save it again") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a JSON {type(config).__name__}, not an object")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err})") from err
    return config, tensors
