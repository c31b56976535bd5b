"""Atomic ``config.json`` + ``model.safetensors`` artifact directories, written and read in one place.

SID tokenizers, :class:`prefixmem.PrefixMem` and :class:`sid.ranking.RankingHead` all save
themselves Hugging Face style: a directory holding a JSON config and a safetensors weight file.
:func:`save_artifact` writes such a directory atomically; :func:`load_artifact` reads it back with
errors that name the missing or broken file and what the directory should have been.
"""

from __future__ import annotations

import json
import math
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
    usual_mode(tmp)
    try:
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            f.write(dumps_strict(config, indent=2, sort_keys=True))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt"},  # what transformers' loaders expect to find
        )
        replace_path(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def usual_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by `tempfile` (mode 0600/0700) the mode `open` would give it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def replace_path(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename `source` onto `target`, a file or a directory, never leaving neither in place.

    os.replace cannot swap a non-empty directory, so an existing directory is moved aside
    first: at every moment `target` is the old version or the new one (a crash between the two
    renames leaves the old one beside it, under a hidden `.NAME.old-*` name).
    """
    source, target = Path(source), Path(target)
    if target.is_dir() and not target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


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
    check_safetensors(weights_path)
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err})") from err
    return config, tensors


# --------------------------------------------------------------------------------------------
# Strict JSON and weight files that are checked before anything trusts them


def strict_jsonable(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by None, numpy scalars unwrapped.

    JSON has no NaN: Python's `json` writes a bare `NaN` that other readers refuse, so every
    config and report goes through this before it is written.
    """
    if isinstance(obj, dict):
        return {str(k): strict_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalars
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def dumps_strict(obj: Any, **kwargs) -> str:
    """`json.dumps` that never writes NaN/Infinity (they become null)."""
    return json.dumps(strict_jsonable(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write strict JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps_strict(obj, indent=indent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ValueError, in one line, when `path` is not a whole safetensors file.

    Reads only the header: 8 bytes of length, the JSON header, then checks that the file holds
    exactly the tensor bytes the header declares. A truncated download or a half-copied file
    fails here with the sizes named, instead of deep inside a loader.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated: {size} bytes, not a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > size - 8:
            raise ValueError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes, "
                f"the file holds {size}"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} has a corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header (not a JSON object)")
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header declares {expected} bytes, the file "
            f"holds {size}; save or download it again"
        )


def check_weights_folder(folder: str | os.PathLike, *, what: str) -> None:
    """Refuse a model folder whose weights are pickles, or whose safetensors are not whole.

    Pickle files (`pytorch_model.bin`, `.pt`, `.ckpt` …) can run code when loaded, so they are
    never loaded; a folder holding only those gets a one-line error saying how to convert.
    """
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not weights:
        if pickles:
            raise ValueError(
                f"{what} {folder} holds pickle weights ({', '.join(p.name for p in pickles)}), "
                "which this toolkit never loads (they can run code); convert them to "
                "safetensors once, e.g. model.save_pretrained(folder, safe_serialization=True)"
            )
        raise FileNotFoundError(f"{what} {folder} holds no *.safetensors weights")
    for path in weights:
        check_safetensors(path)
