import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sid.data import load_builtin
from sid.embed import embed_texts, load_item_embeddings, save_embeddings


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
        embed_texts(["a", "  "], cache_dir=None)


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
