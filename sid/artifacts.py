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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """The one way this project writes an artifact: yield a temporary path beside `target`
    (an empty folder when `directory`), and when the block finishes rename it onto `target`
    (`replace_path`). An exception removes the temporary and leaves `target` as it was, so a
    crash never leaves half a file or folder under the artifact's name.

        with atomic_path(run / "report.md") as tmp:
            tmp.write_text(text)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    usual_mode(tmp)
    try:
        yield tmp
        replace_path(tmp, target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def save_artifact(
    directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` atomically."""
    with atomic_path(directory, directory=True) as tmp:
        (tmp / CONFIG_NAME).write_text(
            dumps_strict(config, indent=2, sort_keys=True), encoding="utf-8"
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt"},  # what transformers' loaders expect to find
        )


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
    """Write strict JSON to `path` atomically."""
    write_text_atomic(path, dumps_strict(obj, indent=indent))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
