"""SemanticIDs: uniqueness under both collision policies, the prefix trie, stable add_items,
save/load, codebook health."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sid.codes import PrefixTrie, SemanticIDs, codebook_health


class FixedTokenizer:
    """A stand-in tokenizer: 'embeddings' are the codes themselves plus last-level distances."""

    def __init__(self, codebook_sizes):
        self.codebook_sizes = list(codebook_sizes)

    def encode(self, X):
        return torch.as_tensor(X)[:, : len(self.codebook_sizes)].long()

    def last_level_distances(self, X):
        codes = self.encode(X)
        k = self.codebook_sizes[-1]
        # distance grows with |code - own code|, so the nearest free code is the closest index
        return (torch.arange(k)[None, :] - codes[:, -1:]).abs().float()


def ids(n, prefix="i"):
    return [f"{prefix}{i}" for i in range(n)]


def brute_force_prefixes(codes):
    return {tuple(row[:level]) for row in codes.tolist() for level in range(codes.shape[1] + 1)}


def test_suffix_policy_makes_duplicate_catalogue_unique():
    codes = torch.tensor([[1, 2], [1, 2], [1, 2], [0, 3], [0, 3], [2, 2]])
    sids = SemanticIDs.from_codes(codes, ids(6), codebook_sizes=[4, 4], collision_headroom=4)
    assert sids.codes[:, :2].tolist() == codes.tolist()  # raw levels untouched
    assert sids.codes[:, 2].tolist() == [0, 1, 2, 0, 1, 0]  # TIGER counter per group
    assert sids.codebook_sizes == [4, 4, 3 + 4]  # largest group + headroom
    assert torch.unique(sids.codes, dim=0).shape[0] == 6
    assert sids.lookup(sids.codes).tolist() == list(range(6))


def test_reassign_moves_colliders_to_nearest_free_code():
    codes = torch.tensor([[1, 2], [1, 2], [1, 2], [0, 3]])
    # item 1 is closest to code 2, so it keeps it; items 0 and 2 move to 1 and 3
    dist = torch.tensor([[5, 1, 2, 1.5], [9, 9, 0, 9], [5, 5, 1, 0.5], [0, 0, 0, 0]])
    sids = SemanticIDs.from_codes(
        codes, ids(4), codebook_sizes=[4, 4], policy="reassign", distances=dist
    )
    assert not sids.has_collision_level
    assert sids.codes.tolist() == [[1, 1], [1, 2], [1, 3], [0, 3]]


def test_reassign_falls_back_to_suffix_when_prefix_is_full():
    # 3 items on a prefix with only 2 last-level codes: one must take a suffix
    codes = torch.tensor([[0, 0], [0, 0], [0, 0]])
    dist = torch.tensor([[0.0, 1.0], [0.1, 1.0], [0.2, 2.0]])
    sids = SemanticIDs.from_codes(
        codes, ids(3), codebook_sizes=[2, 2], policy="reassign", distances=dist
    )
    assert sids.has_collision_level
    assert torch.unique(sids.codes, dim=0).shape[0] == 3
    assert sids.codes[:, :2].tolist() == [[0, 0], [0, 1], [0, 0]]


@pytest.mark.parametrize("policy", ["suffix", "reassign"])
def test_uniqueness_on_heavily_colliding_catalogue(policy):
    g = torch.Generator().manual_seed(0)
    # 300 items drawn from only 20 distinct raw code paths
    paths = torch.randint(0, 8, (20, 3), generator=g)
    codes = paths[torch.randint(0, 20, (300,), generator=g)]
    dist = torch.rand(300, 8, generator=g)
    sids = SemanticIDs.from_codes(
        codes, ids(300), codebook_sizes=[8, 8, 8], policy=policy, distances=dist
    )
    assert torch.unique(sids.codes, dim=0).shape[0] == 300
    assert sids.lookup(sids.codes).tolist() == list(range(300))
    health = codebook_health(codes, codebook_sizes=[8, 8, 8], semantic_ids=sids)
    assert health["collision_rate_before"] > 0.9
    assert health["collision_rate_after"] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 5), min_size=1, max_size=4),
    n=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_trie_allows_exactly_prefixes_of_existing_sids(sizes, n, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1)
    codes = torch.unique(codes, dim=0)
    trie = PrefixTrie.build(codes, sizes)
    valid = brute_force_prefixes(codes)
    # walk every node reachable level by level and compare allowed children to brute force
    frontier = {(): 0}
    for level, k in enumerate(sizes):
        nxt = {}
        for prefix, node in frontier.items():
            allowed = trie.allowed(level, torch.tensor([node]))[0].tolist()
            for code in range(k):
                assert allowed[code] == ((*prefix, code) in valid)
                child = int(trie.step(level, torch.tensor(node), torch.tensor(code)))
                assert (child >= 0) == allowed[code]
                if allowed[code]:
                    nxt[(*prefix, code)] = child
        frontier = nxt
    # at the last level the child is the item index
    for prefix, item in frontier.items():
        assert tuple(codes[item].tolist()) == prefix
    assert trie.item_nodes.shape == codes.shape and bool((trie.item_nodes[:, 0] == 0).all())


def test_trie_invalid_nodes_and_codes_give_minus_one():
    trie = PrefixTrie.build(torch.tensor([[0, 1], [1, 0]]), [2, 2])
    assert trie.step(0, torch.tensor([-1, 0]), torch.tensor([0, 5])).tolist() == [-1, -1]
    assert trie.allowed(1, torch.tensor([-1])).tolist() == [[False, False]]


def test_lookup_returns_minus_one_for_unknown_sid():
    sids = SemanticIDs.from_codes(torch.tensor([[0, 1], [1, 0]]), ["a", "b"], codebook_sizes=[2, 2])
    assert sids.lookup(torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0]])).tolist() == [1, -1, 0]
    assert sids.sid("b") == (1, 0, 0) and sids.item_index("a") == 0
    with pytest.raises(ValueError, match="unknown item id 'zz'"):
        sids.item_index("zz")


@pytest.mark.parametrize("policy", ["suffix", "reassign"])
def test_add_items_keeps_existing_sids(policy):
    tok = FixedTokenizer([4, 4])
    X_old = torch.tensor([[1, 2], [1, 2], [0, 3], [3, 3]])
    sids = SemanticIDs.from_embeddings(
        X_old, ids(4), tokenizer=tok, policy=policy, collision_level=True
    )
    before = {i: sids.sid(i) for i in sids.item_ids}
    X_new = torch.tensor([[1, 2], [0, 3], [2, 0], [1, 2]])
    grown = sids.add_items(X_new, ids(4, "new"), tokenizer=tok)
    assert {i: grown.sid(i) for i in before} == before
    assert len(grown) == 8 and torch.unique(grown.codes, dim=0).shape[0] == 8
    assert grown.lookup(grown.codes).tolist() == list(range(8))
    assert grown.sid("new2")[:2] == (2, 0)  # no collision: raw codes kept
    if policy == "suffix":
        # (1, 2) already holds suffixes 0 and 1, so the new colliders take 2 and 3
        assert grown.sid("new0") == (1, 2, 2) and grown.sid("new3") == (1, 2, 3)


def test_add_items_raises_when_collision_level_overflows():
    tok = FixedTokenizer([2, 2])
    sids = SemanticIDs.from_codes(
        torch.tensor([[0, 0], [0, 0]]), ids(2), codebook_sizes=[2, 2], collision_codebook_size=3
    )
    with pytest.raises(ValueError, match="collision_codebook_size=3"):
        sids.add_items(torch.tensor([[0, 0], [0, 0]]), ids(2, "n"), tokenizer=tok)


def test_add_items_rejects_known_ids():
    tok = FixedTokenizer([2, 2])
    sids = SemanticIDs.from_codes(torch.tensor([[0, 0]]), ["a"], codebook_sizes=[2, 2])
    with pytest.raises(ValueError, match="already have SIDs, first 'a'"):
        sids.add_items(torch.tensor([[1, 1]]), ["a"], tokenizer=tok)


def test_capacity_too_small_for_catalogue_is_refused():
    codes = torch.zeros(10, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="at most 4 distinct SIDs, fewer than the 10 items"):
        SemanticIDs.from_codes(
            codes,
            ids(10),
            codebook_sizes=[2, 2],
            policy="reassign",
            collision_level=False,
            distances=torch.zeros(10, 2),
        )
    with pytest.raises(ValueError, match="collision level of 2 give at most 8"):
        SemanticIDs.from_codes(codes, ids(10), codebook_sizes=[2, 2], collision_codebook_size=2)


def test_bad_codes_and_ids_are_named():
    with pytest.raises(ValueError, match="row 1 level 0 has code 7"):
        SemanticIDs.from_codes(torch.tensor([[0, 0], [7, 0]]), ids(2), codebook_sizes=[4, 4])
    with pytest.raises(ValueError, match="item id 'a' appears twice"):
        SemanticIDs.from_codes(torch.tensor([[0, 0], [1, 0]]), ["a", "a"], codebook_sizes=[4, 4])
    with pytest.raises(ValueError, match="needs last-level distances"):
        SemanticIDs.from_codes(
            torch.tensor([[0, 0]]), ["a"], codebook_sizes=[4, 4], policy="reassign"
        )


def test_save_load_round_trip(tmp_path):
    codes = torch.tensor([[1, 2], [1, 2], [0, 3]])
    sids = SemanticIDs.from_codes(codes, ["x", "y", "z"], codebook_sizes=[4, 4])
    sids.save(tmp_path)
    loaded = SemanticIDs.load(tmp_path)
    assert torch.equal(loaded.codes, sids.codes)
    assert loaded.item_ids == sids.item_ids and loaded.codebook_sizes == sids.codebook_sizes
    assert loaded.num_base_levels == 2 and loaded.policy == "suffix"
    meta = json.loads((tmp_path / "semantic_ids.json").read_text())
    assert meta["sids"]["y"] == [1, 2, 1] and meta["collision_level"] == 2
    for a, b in zip(loaded.trie.node_child, sids.trie.node_child, strict=True):
        assert torch.equal(a, b)


def test_load_rejects_mismatched_or_corrupt_files(tmp_path):
    sids = SemanticIDs.from_codes(torch.tensor([[1, 2], [0, 3]]), ["x", "y"], codebook_sizes=[4, 4])
    sids.save(tmp_path)
    path = tmp_path / "semantic_ids.json"
    meta = json.loads(path.read_text())
    meta["sids"]["y"] = [0, 3, 1]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagree on the SIDs"):
        SemanticIDs.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        SemanticIDs.load(tmp_path)
    (tmp_path / "codes.safetensors").write_bytes(b"garbage")
    sids.save(tmp_path / "other")
    (tmp_path / "other" / "codes.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="codes.safetensors is corrupt"):
        SemanticIDs.load(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="semantic_ids.json not found"):
        SemanticIDs.load(tmp_path / "missing")


def test_codebook_health_reports_usage_and_collisions():
    codes = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 1]])
    h = codebook_health(codes, codebook_sizes=[4, 2])
    assert h["levels"][0]["utilisation"] == 0.5 and h["levels"][1]["utilisation"] == 1.0
    assert h["levels"][0]["perplexity"] == pytest.approx(2.0)
    assert h["collision_rate_before"] == pytest.approx(0.25)
    assert h["items_in_collisions_before"] == pytest.approx(0.5)
    assert h["largest_collision_group"] == 2
    json.dumps(h)
