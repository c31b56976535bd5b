import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sid import model as sid_model
from sid.data import load_builtin
from sid.embed import cache_root, embed_texts, load_item_embeddings, save_embeddings


def test_ml100k_embeddings_are_unit_norm_and_cached(tmp_path):
    texts = load_builtin("movielens-100k").item_texts
    first = embed_texts(texts, cache_dir=tmp_path, show_progress=False)
    assert embed_texts.last_cache_hit is False
    assert first.shape == (1682, 384) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    second = embed_texts(texts, cache_dir=tmp_path, show_progress=False)
    assert embed_texts.last_cache_hit is True
    np.testing.assert_array_equal(first, second)
    # Similar titles are closer than unrelated ones: the vectors carry meaning.
    toy1, toy2 = texts.index("Toy Story (1995) | Animation, Children's, Comedy"), None
    toy2 = next(i for i, t in enumerate(texts) if t.startswith("Aladdin (1992)"))
    other = next(i for i, t in enumerate(texts) if t.startswith("Nadja"))
    assert first[toy1] @ first[toy2] > first[toy1] @ first[other]


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="row 1"):
        embed_texts(["a", "  "], cache_dir=False)


def test_cache_root_is_sid_cache_or_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("SID_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "sid-genrec"
    assert sid_model.cache_root is cache_root  # one definition, also used for model conversion


def test_default_cache_is_under_sid_cache_and_reused_from_another_cwd(
    monkeypatch, tmp_path, caplog, capsys
):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    texts = ["Toy Story (1995) | Animation", "Heat (1995) | Action, Crime"]
    monkeypatch.chdir(tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="sid.embed"), warnings.catch_warnings():
        # our calls into sentence-transformers/transformers use nothing deprecated
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        first = embed_texts(texts)
    assert embed_texts.last_cache_hit is False
    files = list((tmp_path / "cache" / "embeddings").glob("*.safetensors"))
    assert len(files) == 1
    assert not (tmp_path / "a" / ".cache").exists()  # nothing written to the working directory
    # one log line for the pass; stderr is not a terminal here, so no progress bar is drawn
    assert [r.message for r in caplog.records if r.message.startswith("embedded 2 texts")]
    assert "\r" not in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "b")
    second = embed_texts(texts)
    assert embed_texts.last_cache_hit is True
    np.testing.assert_array_equal(first, second)
    assert Path.cwd() == tmp_path / "b" and not (tmp_path / "b" / ".cache").exists()


def test_npy_embeddings_wrong_row_count(tmp_path):
    np.save(tmp_path / "e.npy", np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="3 embedding rows for 2 items"):
        load_item_embeddings(tmp_path / "e.npy", ["a", "b"])


def test_nan_or_inf_embeddings_name_the_row(tmp_path):
    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[2, 1] = np.inf
    np.save(tmp_path / "e.npy", vectors)
    with pytest.raises(ValueError, match="NaN or inf, first at row 2"):
        load_item_embeddings(tmp_path / "e.npy", ["a", "b", "c"])
    vectors[2, 1] = 0
    vectors[1, 0] = np.nan
    save_file({"embeddings": torch.from_numpy(vectors)}, str(tmp_path / "e.safetensors"))
    with pytest.raises(ValueError, match="row 1"):
        load_item_embeddings(tmp_path / "e.safetensors", ["a", "b", "c"])


def test_safetensors_and_parquet_align_by_item_id(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_embeddings(tmp_path / "e.safetensors", vectors, item_ids=["x", "y", "z"])
    got = load_item_embeddings(tmp_path / "e.safetensors", ["z", "x", "y"])
    np.testing.assert_array_equal(got, vectors[[2, 0, 1]])
    pq.write_table(
        pa.table({"item_id": ["x", "y", "z"], "embedding": vectors.tolist()}),
        tmp_path / "e.parquet",
    )
    got = load_item_embeddings(tmp_path / "e.parquet", ["y", "z", "x"])
    np.testing.assert_array_equal(got, vectors[[1, 2, 0]])
    with pytest.raises(ValueError, match=r"no embedding for 1 catalogue item.*'w'"):
        load_item_embeddings(tmp_path / "e.parquet", ["x", "w"])


def test_parquet_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"], "vec": [[1.0]]}), tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['item_id', 'embedding'\]"):
        load_item_embeddings(tmp_path / "e.parquet", ["x"])


def test_embed_py_over_two_processes_writes_what_one_process_computes(tmp_path):
    from conftest import launch_processes

    from sid.embed import embed_items, load_item_embeddings

    ids = [f"m{i}" for i in range(23)]  # 12 + 11 over two processes
    texts = [f"movie number {i} | {'drama' if i % 2 else 'comedy and action'}" for i in range(23)]
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, texts, strict=True))
    )
    one = embed_items(texts, tmp_path / "one.safetensors", item_ids=ids, show_progress=False)
    out = tmp_path / "two.safetensors"
    done = launch_processes(
        "embed.py", "--items", items, "--text_cols", "title", "--output", out, "--batch_size", "5"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "over 2 process(es)" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "items.csv",
        "one.safetensors",
        "two.safetensors",
    ]  # the part files are gone
    # read back by item id, in another order, as train.py --embeddings does
    order = ids[::-1]
    two = load_item_embeddings(out, order)
    np.testing.assert_allclose(two, one[::-1], atol=1e-5)
    with pytest.raises(ValueError, match="safetensors"):
        embed_items(texts, tmp_path / "x.npy", item_ids=ids)
