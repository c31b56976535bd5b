"""Reading interaction and item tables from files, with checks that name the file, the line
and the flag that fixes a problem; `sid.data` builds its datasets on top of these.

Formats: CSV/TSV/Parquet/JSON Lines through `datasets`/Arrow, a folder of Parquet shards
(`part-00000.parquet`, ... read in name order as one table), or a folder written by
`Dataset.save_to_disk`. "line N" is a line of a text file (the header is line 1), "row N"
(from 0) a row of Parquet or a dataset folder, "row N of SHARD" a row of one shard.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# Rows per record batch of the Arrow cache `datasets` writes (its default is 1,000): 10M rows
# would otherwise make 10,000 chunks, which doubles the time and the memory of reading them
# and slows every compute call over the column. 100k rows keeps a batch of text well under
# Arrow's 2 GB limit per string column chunk (up to ~20 KB per value).
_WRITER_BATCH_SIZE = 100_000

# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write: they mark a saved dataset
# folder, which is told apart from a folder of Parquet shards by them.
_SAVED_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


@dataclass(frozen=True)
class ShardRows:
    """Where the rows of a table read from Parquet shards come from: shard k holds table rows
    `starts[k]` to `starts[k + 1] - 1`; messages name a row as "row N of SHARD"."""

    names: list[str]
    starts: np.ndarray  # int64 [shards + 1]

    def place(self, row: int) -> str:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"row {int(row) - int(self.starts[k])} of {self.names[k]}"


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS)


def _parquet_shards(path: Path, *, what: str) -> list[Path]:
    """The Parquet files of folder `path`, sorted by name (hidden and `_`-prefixed files, such
    as Spark's `_SUCCESS`, are skipped, as Arrow skips them); refuses a folder with none."""
    shards = sorted(
        (
            f
            for f in path.iterdir()
            if f.suffix.lower() == ".parquet" and f.is_file() and not f.name.startswith((".", "_"))
        ),
        key=lambda f: f.name,
    )
    if not shards:
        nested = next((f for f in path.rglob("*.parquet") if f.is_file()), None)
        hint = (
            f"; subfolders are not read (e.g. {nested.relative_to(path)}): pass the folder that "
            "holds the shards"
            if nested
            else ""
        )
        raise ValueError(
            f"{what} folder {path} holds no .parquet files and is not a dataset saved with "
            f"Dataset.save_to_disk (no {' or '.join(_SAVED_DATASET_MARKERS)}){hint}"
        )
    return shards


def _shard_schema(shards: list[Path], *, folder: Path, what: str) -> pa.Schema:
    """The one schema every shard shares (read from the Parquet footers, no data); refuses
    shards that disagree on column names or types, naming the shard and the columns."""
    import pyarrow.parquet as pq

    first = None
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"could not read {what} shard {shard}: {err}") from err
        if first is None:
            first, first_name = schema, shard.name
            continue
        names, reference = set(schema.names), set(first.names)
        if names != reference:
            missing = [n for n in first.names if n not in names]
            extra = [n for n in schema.names if n not in reference]
            raise ValueError(
                f"{what} folder {folder}: shards disagree on columns: {shard.name} has "
                f"{schema.names}, {first_name} has {first.names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; extra {extra}" if extra else "")
                + "; every shard must have the same columns"
            )
        for name in first.names:
            a, b = first.field(name).type, schema.field(name).type
            if a != b and not (pa.types.is_null(a) or pa.types.is_null(b)):
                raise ValueError(
                    f"{what} folder {folder}: shards disagree on the type of column {name!r}: "
                    f"{a} in {first_name}, {b} in {shard.name}; write every shard with the "
                    "same schema"
                )
    return first


def _file_format(path: Path, *, sep: str | None, what: str) -> tuple[str, str | None]:
    """(format, separator) of a data file, ("folder", None) for a saved dataset folder, or
    ("shards", None) for a folder of Parquet files; refuses a missing, empty or unknown file
    with a message that names it."""
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        if _is_saved_dataset(path):
            return "folder", None
        _parquet_shards(path, what=what)  # refuses a folder with no Parquet file
        return "shards", None
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


# How messages name a table's rows (see `_place`): file lines, shard rows, or row numbers.
Places = np.ndarray | ShardRows | None


def _read_table(
    path: str | os.PathLike, *, sep: str | None = None, what: str
) -> tuple[pa.Table, Places]:
    """Read a file, a folder of Parquet shards or a saved HF dataset folder into an Arrow
    table through `datasets` (memory-mapped from its Arrow cache).

    Returns (table, lines): `lines` int64 [rows] holds the 1-based line of the file on which
    each row starts (CSV/TSV/JSON Lines); for Parquet shards it is a `ShardRows`; it is None
    where rows have no line (one Parquet file, dataset folders, a JSON array), and messages
    then name rows by number.
    """
    import datasets

    path = Path(path)
    fmt, sep = _file_format(path, sep=sep, what=what)
    if fmt == "folder":
        return _load_folder(path, what=what).data.table, None
    kwargs: dict = {}
    lines: Places = None
    data_files: str | list[str] = str(path)
    if fmt == "shards":
        import pyarrow.parquet as pq

        shards = _parquet_shards(path, what=what)
        _shard_schema(shards, folder=path, what=what)
        counts = [pq.ParquetFile(f).metadata.num_rows for f in shards]
        lines = ShardRows([f.name for f in shards], np.concatenate([[0], np.cumsum(counts)]))
        data_files = [str(f) for f in shards]
        fmt = "parquet"
    elif fmt == "csv":
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
        ds = datasets.load_dataset(
            fmt,
            data_files=data_files,
            split="train",
            writer_batch_size=_WRITER_BATCH_SIZE,
            **kwargs,
        )
    except Exception as err:
        raise ValueError(f"could not read {what} file {path}: {err}") from err
    finally:
        if verbose:
            datasets.utils.logging.enable_progress_bar()
    table = ds.data.table
    if table.num_rows == 0:
        raise ValueError(f"{what} file has a header but no rows: {path}")
    if isinstance(lines, ShardRows):
        if int(lines.starts[-1]) != table.num_rows:
            lines = None  # the shards changed while being read: name rows by number
    elif lines is not None and len(lines) != table.num_rows:
        lines = None  # e.g. a JSON array, not JSON Lines: rows are then named by number
    return table, lines


def _place(row: int, lines: Places) -> str:
    """How a message names data row `row` (from 0): its file line when known, its shard and
    row within it for Parquet shards, else its number."""
    if isinstance(lines, ShardRows):
        return lines.place(row)
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
        elif fmt == "shards":
            names = _shard_schema(_parquet_shards(path, what=what), folder=path, what=what).names
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


def _numeric(column: pa.ChunkedArray, *, name: str, where: str, lines: Places = None) -> np.ndarray:
    """Numbers (or text holding numbers) → float64 [N]; refuses text that is not a number,
    NaN (an empty Parquet value included) and ±inf with the line or row."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        # Arrow parses the text (no Python string per row); a null becomes NaN below.
        text = _as_str(column)
        try:
            values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row, value = _first_non_float(text)
            raise ValueError(
                f"{where}: column {name!r} must be numeric; {_place(row, lines)} holds {value!r}"
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
    column: pa.ChunkedArray, *, name: str, where: str, lines: Places = None
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
        return values.astype(np.int64, copy=False)
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


def _first_non_float(text: pa.ChunkedArray) -> tuple[int, str]:
    """(row, value) of the first value of `text` Arrow cannot parse as a number. Only on the
    error path: the chunks are cast one by one and only the failing one is read in Python."""
    start = 0
    for chunk in text.chunks:
        try:
            pc.cast(chunk, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for i, value in enumerate(chunk.to_pylist()):
                if value is not None and not _is_float(value):
                    return start + i, value
            # Arrow refused what Python reads as a number (e.g. "1_000"): name the chunk's
            # first value that Arrow alone refuses
            for i in range(len(chunk)):
                try:
                    pc.cast(chunk.slice(i, 1), pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return start + i, chunk[i].as_py()
        start += len(chunk)
    raise AssertionError("no value failed to parse")  # pragma: no cover


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
