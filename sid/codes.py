"""SemanticIDs: unique hierarchical item IDs, the prefix trie as tensors, and codebook health.

Raw tokenizer codes collide (similar items share a code path). `SemanticIDs.from_codes` makes
every full SID map to exactly one item with one of two policies:

- ``suffix`` (TIGER): append a collision level whose value counts the items sharing the raw
  code path (0, 1, 2, ...). Its codebook size is fixed when built, with headroom, so that
  `add_items` can give later colliders free values without changing any existing SID.
- ``reassign``: move colliding items to the nearest *free* code at the last level under the
  same prefix (nearest by the tokenizer's last-level distances); items with no free code fall
  back to a suffix. With no fall-back, no extra level is added.

The trie (`PrefixTrie`) stores, per level, a gather table node -> child for every code, so a
decoder masks logits with one index operation per step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sid.artifacts import atomic_path, check_safetensors, write_text_atomic
from sid.tokenizers.base import check_codebook_sizes, check_sid_capacity

SEMANTIC_IDS_NAME = "semantic_ids.json"
CODES_NAME = "codes.safetensors"
_FORMAT = "sid-semantic-ids"
_POLICIES = ("suffix", "reassign")


class PrefixTrie:
    """Valid SID prefixes as per-level gather tables.

    num_levels L; codebook_sizes: list[int] (K_l per level).
    node_child[l]: LongTensor [n_nodes_l, K_l]; entry = index of the child node at level l+1
        for prefix(node) + code, or -1 if that code is not a valid child. Level 0 has exactly
        one node (the root, index 0). At the last level the entry is the item index.
    item_nodes: LongTensor [N, L]: node index at each level on item i's path (column 0 is 0).
    Nodes of a level are numbered in lexicographic order of their prefixes.
    """

    def __init__(
        self, node_child: list[torch.Tensor], item_nodes: torch.Tensor, codebook_sizes: list[int]
    ):
        self.node_child = node_child
        self.item_nodes = item_nodes
        self.codebook_sizes = list(codebook_sizes)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_nodes(self) -> list[int]:
        return [t.shape[0] for t in self.node_child]

    @classmethod
    def build(cls, codes: torch.Tensor, codebook_sizes: Sequence[int]) -> PrefixTrie:
        """Build from unique codes LongTensor [N, L]; one torch.unique per level, no per-prefix loop."""
        n, num_levels = codes.shape
        device = codes.device
        nodes = torch.zeros(n, dtype=torch.long, device=device)
        n_nodes = 1
        node_child, item_nodes = [], [nodes]
        for level, k in enumerate(codebook_sizes):
            # (parent node, code) identifies the child; parent * K + code is a collision-free key
            key = nodes * k + codes[:, level]
            table = torch.full((n_nodes, k), -1, dtype=torch.long, device=device)
            if level == num_levels - 1:
                table.view(-1)[key] = torch.arange(n, device=device)
            else:
                uniq, nodes = torch.unique(key, sorted=True, return_inverse=True)
                table.view(-1)[uniq] = torch.arange(uniq.numel(), device=device)
                n_nodes = uniq.numel()
                item_nodes.append(nodes)
            node_child.append(table)
        return cls(node_child, torch.stack(item_nodes, 1), list(codebook_sizes))

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """nodes LongTensor [...] at `level` -> BoolTensor [..., K_level] of valid next codes.

        A node of -1 (an invalid path) allows nothing.
        """
        table = self.node_child[level]
        out = table[nodes.clamp_min(0)] >= 0
        return out & (nodes >= 0).unsqueeze(-1)

    def step(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Child node (item index at the last level) for nodes [...] and codes [...]; -1 if invalid."""
        table = self.node_child[level]
        k = table.shape[1]
        valid = (nodes >= 0) & (codes >= 0) & (codes < k)
        out = table[nodes.clamp_min(0), codes.clamp(0, k - 1)]
        return torch.where(valid, out, torch.full_like(out, -1))

    def to(self, device) -> PrefixTrie:
        return PrefixTrie(
            [t.to(device) for t in self.node_child], self.item_nodes.to(device), self.codebook_sizes
        )


# ---------------------------------------------------------------------- collision resolution
def _row_groups(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group identical rows of rows [N, M] -> (group id [N], group sizes [G]); M may be 0."""
    if rows.shape[1] == 0:
        return torch.zeros(rows.shape[0], dtype=torch.long), torch.tensor([rows.shape[0]])
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    return inverse, counts


def _first_per_group(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Boolean [N]: the row with the lowest score in each group (ties: lowest index)."""
    by_score = torch.argsort(score, stable=True)
    order = by_score[torch.argsort(group[by_score], stable=True)]
    is_first = torch.ones(order.numel(), dtype=torch.bool)
    is_first[1:] = group[order][1:] != group[order][:-1]
    out = torch.zeros(group.numel(), dtype=torch.bool)
    out[order[is_first]] = True
    return out


def _reassign_last_level(
    base: torch.Tensor, n_fixed: int, distances: torch.Tensor, last_size: int
) -> torch.Tensor:
    """Move colliding movable rows to their nearest free last-level code under their prefix.

    base: LongTensor [N, Lb]; rows < n_fixed never move. distances: [N - n_fixed, K_last] for
    the movable rows. In each group of identical rows, a fixed row keeps the code; otherwise
    the movable row nearest to the code keeps it. The others ("movers") propose their nearest
    code not yet used under their prefix; per proposed code the nearest mover wins; losers
    propose again. Movers with no free code stay put (the caller gives them a suffix).
    Returns the new base codes [N, Lb].
    """
    base = base.clone()
    n = base.shape[0]
    movable = torch.arange(n_fixed, n)
    if movable.numel() == 0:
        return base
    group, _ = _row_groups(base)
    has_fixed = torch.zeros(int(group.max()) + 1, dtype=torch.bool)
    has_fixed[group[:n_fixed]] = True
    own = distances.gather(1, base[movable, -1:]).squeeze(1)
    keeper = _first_per_group(group[movable], own) & ~has_fixed[group[movable]]
    movers = movable[~keeper]
    # a row that is alone in its group is its own keeper, so movers are true collisions only
    if movers.numel() == 0:
        return base
    prefix, _ = _row_groups(base[:, :-1])
    used = torch.zeros(int(prefix.max()) + 1, last_size, dtype=torch.bool)
    settled = torch.ones(n, dtype=torch.bool)
    settled[movers] = False
    used[prefix[settled], base[settled, -1]] = True
    dist = distances[movers - n_fixed].clone()
    while movers.numel() > 0:
        masked = dist.masked_fill(used[prefix[movers]], float("inf"))
        best = masked.argmin(1)
        best_d = masked.gather(1, best[:, None]).squeeze(1)
        open_ = torch.isfinite(best_d)
        movers, best, best_d, dist = movers[open_], best[open_], best_d[open_], dist[open_]
        if movers.numel() == 0:
            break
        win = _first_per_group(prefix[movers] * last_size + best, best_d)
        base[movers[win], -1] = best[win]
        used[prefix[movers[win]], best[win]] = True
        movers, dist = movers[~win], dist[~win]
    return base


def _suffix_values(
    base: torch.Tensor, n_fixed: int, fixed_suffix: torch.Tensor, suffix_size: int | None
) -> torch.Tensor:
    """Collision-level values: rows < n_fixed keep `fixed_suffix`; each new row gets the
    smallest value not used by its group (identical base rows), in row order.

    Returns LongTensor [N]. Raises ValueError when a group needs a value >= suffix_size.
    """
    n = base.shape[0]
    group, counts = _row_groups(base)
    new = torch.arange(n_fixed, n)
    g_new = group[new]
    order = torch.argsort(g_new, stable=True)
    per_group_new = torch.bincount(g_new, minlength=counts.numel())
    first = torch.cumsum(per_group_new, 0) - per_group_new
    rank = torch.empty_like(g_new)
    rank[order] = torch.arange(new.numel()) - first[g_new[order]]
    size = suffix_size if suffix_size is not None else int(counts.max())
    used = torch.zeros(counts.numel(), max(size, 1), dtype=torch.bool)
    if n_fixed:
        used[group[:n_fixed], fixed_suffix] = True
    free_before = torch.cumsum((~used[g_new]).long(), 1)  # [N_new, S]: free values <= s
    values = torch.searchsorted(free_before, (rank + 1)[:, None]).squeeze(1)
    if bool((values >= size).any()):
        worst = int(counts.max())
        raise ValueError(
            f"a collision group of {worst} items needs more collision-level values than "
            f"collision_codebook_size={size}; rebuild the SemanticIDs with a larger "
            "collision_codebook_size (existing SIDs then stay valid only if you rebuild "
            "everything), or use more/larger codebook levels"
        )
    out = torch.empty(n, dtype=torch.long)
    out[:n_fixed] = fixed_suffix
    out[new] = values
    return out


def _duplicate_rows(codes: torch.Tensor) -> torch.Tensor:
    """Indices of rows that share their full code with an earlier row."""
    group, counts = _row_groups(codes)
    first = _first_per_group(group, torch.zeros(codes.shape[0]))
    return torch.nonzero(~first).flatten()


# ---------------------------------------------------------------------- SemanticIDs
class SemanticIDs:
    """Item <-> unique SID map.

    item_ids: list[str]; codes: LongTensor [N, L] (unique rows); codebook_sizes: list[int]
    (L includes the collision level when there is one); num_base_levels: levels that came
    from the tokenizer; has_collision_level: whether codes[:, -1] is a collision counter;
    policy: "suffix" | "reassign"; trie: PrefixTrie over `codes`.
    """

    def __init__(
        self,
        *,
        item_ids: Sequence[str],
        codes: torch.Tensor,
        codebook_sizes: Sequence[int],
        num_base_levels: int,
        policy: str,
    ):
        self.item_ids = list(item_ids)
        self.codes = codes
        self.codebook_sizes = list(codebook_sizes)
        self.num_base_levels = int(num_base_levels)
        self.policy = policy
        self._index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.trie = PrefixTrie.build(codes, self.codebook_sizes)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def has_collision_level(self) -> bool:
        return self.num_levels > self.num_base_levels

    def __len__(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(
        cls,
        codes,
        item_ids: Sequence[str],
        *,
        codebook_sizes: Sequence[int],
        policy: str = "suffix",
        distances: torch.Tensor | None = None,
        collision_level: bool | None = None,
        collision_codebook_size: int | None = None,
        collision_headroom: int = 8,
    ) -> SemanticIDs:
        """Raw codes [N, Lb] (+ item ids) -> unique SIDs.

        policy "suffix" always adds a collision level. "reassign" needs `distances`
        [N, K_{Lb-1}] (e.g. `tokenizer.last_level_distances(X)`) and adds a collision level
        only for items with no free code, unless `collision_level` forces it on/off.
        The collision level's size is `collision_codebook_size`, or the largest collision
        group + `collision_headroom` (room for `add_items`).
        """
        codes = _as_codes(codes, name="codes")
        sizes = check_codebook_sizes(codebook_sizes)
        n, num_base = codes.shape
        if policy not in _POLICIES:
            raise ValueError(f"policy={policy!r}; use one of {_POLICIES}")
        if len(sizes) != num_base:
            raise ValueError(
                f"codes have {num_base} levels but codebook_sizes has {len(sizes)} entries {sizes}"
            )
        _check_item_ids(item_ids, n)
        _check_code_range(codes, sizes, name="codes")
        if collision_headroom < 0:
            raise ValueError(f"collision_headroom={collision_headroom} must be >= 0")
        if policy == "suffix" and collision_level is False:
            raise ValueError("policy='suffix' needs a collision level; drop collision_level=False")
        may_add_level = collision_level is not False
        if not may_add_level or collision_codebook_size is not None:
            # (a collision level of unspecified size is sized to fit, so no bound then)
            check_sid_capacity(
                n, sizes, collision_codebook_size=collision_codebook_size if may_add_level else None
            )
        if policy == "reassign":
            dist = _check_distances(distances, n, sizes[-1])
            codes = _reassign_last_level(codes, 0, dist, sizes[-1])
        remaining = _duplicate_rows(codes)
        add_level = policy == "suffix" or collision_level is True or remaining.numel() > 0
        if add_level and collision_level is False:
            raise ValueError(
                f"{remaining.numel()} items still share a SID after reassign (first: item "
                f"{item_ids[int(remaining[0])]!r}) and collision_level=False; allow a "
                "collision level or use larger codebooks"
            )
        if add_level:
            _, counts = _row_groups(codes)
            size = collision_codebook_size or int(counts.max()) + collision_headroom
            size = max(size, 2)
            suffix = _suffix_values(codes, 0, codes.new_empty(0), size)
            codes = torch.cat([codes, suffix[:, None]], 1)
            sizes = [*sizes, size]
        return cls(
            item_ids=item_ids,
            codes=codes,
            codebook_sizes=sizes,
            num_base_levels=num_base,
            policy=policy,
        )

    @classmethod
    def from_embeddings(
        cls, embeddings, item_ids: Sequence[str], *, tokenizer, policy: str = "suffix", **kwargs
    ) -> SemanticIDs:
        """Encode with a fitted tokenizer, then `from_codes` (distances supplied for reassign)."""
        raw = tokenizer.encode(embeddings)
        distances = tokenizer.last_level_distances(embeddings) if policy == "reassign" else None
        return cls.from_codes(
            raw,
            item_ids,
            codebook_sizes=tokenizer.codebook_sizes,
            policy=policy,
            distances=distances,
            **kwargs,
        )

    def add_items(self, new_embeddings, new_ids: Sequence[str], *, tokenizer) -> SemanticIDs:
        """New items -> a new SemanticIDs holding old + new; every existing SID is unchanged.

        New collisions take free collision-level values (suffix) or, with policy "reassign",
        first the nearest free last-level code. Raises ValueError when the collision level
        overflows or, without one, when a new item cannot get a unique SID.
        """
        new_ids = list(new_ids)
        clash = [i for i in new_ids if i in self._index]
        if clash:
            raise ValueError(
                f"{len(clash)} new item id(s) already have SIDs, first {clash[0]!r}; "
                "add_items only adds items that are not in the catalogue"
            )
        _check_item_ids(new_ids, None)
        base_sizes = self.codebook_sizes[: self.num_base_levels]
        if list(tokenizer.codebook_sizes) != base_sizes:
            raise ValueError(
                f"tokenizer codebook sizes {list(tokenizer.codebook_sizes)} differ from these "
                f"SIDs' tokenizer levels {base_sizes}; use the tokenizer the SIDs were built with"
            )
        raw = _as_codes(tokenizer.encode(new_embeddings), name="tokenizer.encode output")
        if raw.shape[0] != len(new_ids):
            raise ValueError(f"{raw.shape[0]} embedding rows for {len(new_ids)} new item ids")
        n_old = len(self.item_ids)
        base = torch.cat([self.codes[:, : self.num_base_levels], raw], 0)
        if self.policy == "reassign":
            dist = _check_distances(
                tokenizer.last_level_distances(new_embeddings), raw.shape[0], base_sizes[-1]
            )
            base = _reassign_last_level(base, n_old, dist, base_sizes[-1])
        if self.has_collision_level:
            suffix = _suffix_values(base, n_old, self.codes[:, -1], self.codebook_sizes[-1])
            codes = torch.cat([base, suffix[:, None]], 1)
        else:
            codes = base
            dup = _duplicate_rows(codes)
            if dup.numel():
                row = int(dup[0])
                raise ValueError(
                    f"new item {[*self.item_ids, *new_ids][row]!r} gets SID "
                    f"{tuple(codes[row].tolist())} which is taken, and these SIDs have no "
                    "collision level; rebuild with collision_level=True to leave room"
                )
        return SemanticIDs(
            item_ids=[*self.item_ids, *new_ids],
            codes=codes,
            codebook_sizes=self.codebook_sizes,
            num_base_levels=self.num_base_levels,
            policy=self.policy,
        )

    # ------------------------------------------------------------------ look-ups
    def item_index(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ValueError(f"unknown item id {item_id!r}: it has no SID") from None

    def sid(self, item_id: str) -> tuple[int, ...]:
        return tuple(self.codes[self.item_index(item_id)].tolist())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Full SIDs LongTensor [M, L] -> item index LongTensor [M], -1 where no item has it."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(
                f"codes must have shape [M, {self.num_levels}], got {tuple(codes.shape)}"
            )
        trie = (
            self.trie if codes.device == self.trie.item_nodes.device else self.trie.to(codes.device)
        )
        nodes = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for level in range(self.num_levels):
            nodes = trie.step(level, nodes, codes[:, level])
        return nodes

    # ------------------------------------------------------------------ artifacts
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": 1,
            "policy": self.policy,
            "codebook_sizes": self.codebook_sizes,
            "num_base_levels": self.num_base_levels,
            "collision_level": self.num_base_levels if self.has_collision_level else None,
            "num_items": len(self.item_ids),
            "sids": {i: c for i, c in zip(self.item_ids, self.codes.tolist(), strict=True)},
        }

    def fingerprint(self) -> str:
        """Content hash of the item ↔ SID map (item ids, codes, codebook sizes, policy).

        A trained model records the fingerprint of the SIDs it learnt; loading checks it, so a
        model is never paired with semantic IDs it was not trained on, even of the same sizes.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps([list(self.codebook_sizes), self.num_base_levels]).encode())
        digest.update(json.dumps(list(self.item_ids)).encode())
        digest.update(self.codes.cpu().contiguous().numpy().astype("<i8").tobytes())
        return digest.hexdigest()[:16]

    def save(self, path_dir: str | os.PathLike) -> None:
        """Write `semantic_ids.json` and `codes.safetensors` into path_dir, each atomically."""
        path_dir = Path(path_dir)
        path_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path_dir / CODES_NAME) as tmp:
            save_file({"codes": self.codes.cpu().contiguous()}, str(tmp))
        write_text_atomic(path_dir / SEMANTIC_IDS_NAME, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path_dir: str | os.PathLike) -> SemanticIDs:
        """Read and validate what `save` wrote; ValueError names the file and the problem."""
        path_dir = Path(path_dir)
        json_path, codes_path = path_dir / SEMANTIC_IDS_NAME, path_dir / CODES_NAME
        for path in (json_path, codes_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found; write it with SemanticIDs.save")
        try:
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{json_path} is corrupt ({err}); rebuild the semantic IDs") from err
        need = ("format", "policy", "codebook_sizes", "num_base_levels", "sids")
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{json_path} is not a semantic_ids file (format != {_FORMAT!r})")
        missing = [k for k in need if k not in meta]
        if missing:
            raise ValueError(f"{json_path} lacks key(s) {missing}; rebuild the semantic IDs")
        try:
            check_safetensors(codes_path)
            codes = load_file(str(codes_path))["codes"]
        except Exception as err:  # corrupt headers raise safetensors' own error types
            raise ValueError(f"{codes_path} is corrupt or has no 'codes' tensor ({err})") from err
        sizes = check_codebook_sizes(meta["codebook_sizes"])
        sids = meta["sids"]
        if not isinstance(sids, dict):
            raise ValueError(f"{json_path}: 'sids' must map item id -> SID")
        item_ids = list(sids)
        if codes.dtype != torch.long or tuple(codes.shape) != (len(item_ids), len(sizes)):
            raise ValueError(
                f"{codes_path} holds codes {codes.dtype} {tuple(codes.shape)} but {json_path} "
                f"lists {len(item_ids)} items x {len(sizes)} levels; the two files do not match"
            )
        try:
            json_codes = torch.tensor(list(sids.values()), dtype=torch.long)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{json_path}: every SID must be a list of {len(sizes)} ints") from err
        if json_codes.shape != codes.shape or not torch.equal(json_codes, codes):
            raise ValueError(
                f"{json_path} and {codes_path} disagree on the SIDs; the files are from "
                "different saves — rebuild the semantic IDs"
            )
        _check_code_range(codes, sizes, name=str(codes_path))
        dup = _duplicate_rows(codes)
        if dup.numel():
            raise ValueError(
                f"{json_path}: item {item_ids[int(dup[0])]!r} shares its SID with another "
                "item; the file is corrupt"
            )
        num_base = int(meta["num_base_levels"])
        if not 1 <= num_base <= len(sizes) or len(sizes) - num_base > 1:
            raise ValueError(f"{json_path}: num_base_levels={num_base} does not fit {sizes}")
        if meta["policy"] not in _POLICIES:
            raise ValueError(f"{json_path}: unknown policy {meta['policy']!r}")
        return cls(
            item_ids=item_ids,
            codes=codes,
            codebook_sizes=sizes,
            num_base_levels=num_base,
            policy=meta["policy"],
        )


# ---------------------------------------------------------------------- input checks
def _as_codes(codes, *, name: str) -> torch.Tensor:
    codes = torch.as_tensor(codes)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty [N, L] integer matrix, got shape {tuple(codes.shape)}"
        )
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer codes, got dtype {codes.dtype}")
    return codes.to("cpu", torch.long)


def _check_item_ids(item_ids: Sequence[str], n: int | None) -> None:
    if n is not None and len(item_ids) != n:
        raise ValueError(f"{len(item_ids)} item ids for {n} code rows; give one id per row")
    seen: set = set()
    for i, item_id in enumerate(item_ids):
        if not isinstance(item_id, str):
            raise ValueError(f"item id at row {i} is {item_id!r}; item ids must be strings")
        if item_id in seen:
            raise ValueError(
                f"item id {item_id!r} appears twice (again at row {i}); ids must be unique"
            )
        seen.add(item_id)


def _check_code_range(codes: torch.Tensor, sizes: list[int], *, name: str) -> None:
    bad = (codes < 0) | (codes >= torch.tensor(sizes))
    if bool(bad.any()):
        row, level = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: row {row} level {level} has code {int(codes[row, level])} outside "
            f"[0, {sizes[level]}) (codebook_sizes={sizes})"
        )


def _check_distances(distances, n: int, k: int) -> torch.Tensor:
    if distances is None:
        raise ValueError(
            "policy='reassign' needs last-level distances [N, K]: pass "
            "distances=tokenizer.last_level_distances(X), or use policy='suffix'"
        )
    distances = torch.as_tensor(distances, dtype=torch.float32)
    if tuple(distances.shape) != (n, k):
        raise ValueError(f"distances have shape {tuple(distances.shape)}, expected {(n, k)}")
    return distances


# ---------------------------------------------------------------------- codebook health
def codebook_health(
    raw_codes,
    *,
    codebook_sizes: Sequence[int],
    semantic_ids: SemanticIDs | None = None,
    embeddings=None,
    tokenizer=None,
) -> dict:
    """One JSON-able report on how well the codebooks are used.

    raw_codes: tokenizer output [N, L] (before any collision policy). Reports per level the
    utilisation (fraction of codes used) and perplexity (exp of the code-usage entropy; K_l
    means perfectly even use), the collision rate (1 - distinct SIDs / N) before the policy
    and, given `semantic_ids`, after it, the largest collision group and, given embeddings
    + tokenizer, the reconstruction MSE (mean over elements of (x - decode(codes))^2) and the
    quantisation MSE (in the latent space for RQ-VAE; equal to reconstruction for RQ-KMeans).
    """
    raw = _as_codes(raw_codes, name="raw_codes")
    sizes = check_codebook_sizes(codebook_sizes)
    _check_code_range(raw, sizes, name="raw_codes")
    n = raw.shape[0]
    levels = []
    for level, k in enumerate(sizes):
        counts = torch.bincount(raw[:, level], minlength=k).double()
        p = counts[counts > 0] / n
        levels.append(
            {
                "level": level,
                "codebook_size": k,
                "used_codes": int((counts > 0).sum()),
                "utilisation": float((counts > 0).sum() / k),
                "perplexity": float(torch.exp(-(p * p.log()).sum())),
            }
        )
    _, group_sizes = _row_groups(raw)
    report = {
        "num_items": n,
        "codebook_sizes": sizes,
        "levels": levels,
        "collision_rate_before": 1.0 - group_sizes.numel() / n,
        "items_in_collisions_before": float(group_sizes[group_sizes > 1].sum() / n),
        "largest_collision_group": int(group_sizes.max()),
    }
    if semantic_ids is not None:
        _, after = _row_groups(semantic_ids.codes)
        report["collision_rate_after"] = 1.0 - after.numel() / len(semantic_ids)
        report["policy"] = semantic_ids.policy
        report["sid_codebook_sizes"] = semantic_ids.codebook_sizes
        report["collision_level"] = semantic_ids.has_collision_level
    if embeddings is not None and tokenizer is not None:
        X = torch.as_tensor(embeddings, dtype=torch.float32)
        with torch.no_grad():
            recon = float((X - tokenizer.decode(raw)).pow(2).mean())
            report["reconstruction_mse"] = recon
            latent = getattr(tokenizer, "latent_quantization_mse", None)
            report["quantization_mse"] = float(latent(X)) if latent is not None else recon
    return _jsonable(report)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
