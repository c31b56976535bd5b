"""Stand-alone pre-training of a PrefixMem on a catalogue's semantic IDs, before any LM sees it.

Two objectives on the normalised memory vector ``m_l = PrefixMem.features(level l, prefix c_0..c_l)``
(``memory_dim`` wide, before the projection to the LM width, so a pre-trained memory does not
depend on the LM it is later attached to; the projection and the gate are learned with the LM):

- next code: from ``m_l`` (l < L-1) predict the item's code at level l+1 by cross-entropy over the
  valid children of the prefix only (the trie's ``node_child[l+1][node] >= 0``) — what the LM must
  do at that position, so the memory learns to carry the prefix's children;
- content: from the full SID's vector ``m_{L-1}`` predict the item's content embedding (cosine loss),
  so items with similar content get similar deep memory vectors.

The prediction heads exist only here and are thrown away; the PrefixMem's tables and norm are
trained in place.
The memory table gets sparse gradients (SparseAdam): a step touches only the rows of the batch,
which keeps CPU pre-training fast even with large tables.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prefixmem.encoder import PrefixMem


def _masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def pretrain_prefixmem(
    prefixmem: PrefixMem,
    semantic_ids,
    item_embeddings,
    *,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
    content_weight: float = 1.0,
    progress: bool = True,
) -> dict:
    """Pre-train ``prefixmem`` in place on ``semantic_ids``; returns metrics.

    semantic_ids: a ``SemanticIDs`` (``codes`` LongTensor [N, L], ``codebook_sizes``, ``trie`` with
        ``node_child`` and ``item_nodes``).
    item_embeddings: FloatTensor / ndarray [N, D] content embedding of each item, in
        ``semantic_ids`` item order; None to train the next-code objective only.
    steps, batch_size, lr, seed: items per step are drawn with a generator seeded by ``seed``; the
        heads are initialised from ``seed`` too, so the same inputs give the same result.
    Returns {"loss_first", "loss_last", "next_code_acc_l{l}" (l = 1..L-1, accuracy over all items of
    predicting level l from the prefix ending at level l-1), "content_cos" (mean cosine over all
    items), "seconds", "steps"}.
    """
    cfg = prefixmem.config
    codes = torch.as_tensor(semantic_ids.codes, dtype=torch.long)
    if codes.dim() != 2 or codes.shape[1] != cfg.num_levels:
        raise ValueError(
            f"semantic_ids.codes has shape {tuple(codes.shape)}, expected [N, {cfg.num_levels}] "
            "for this PrefixMem's codebook_sizes"
        )
    if [int(k) for k in semantic_ids.codebook_sizes] != cfg.codebook_sizes:
        raise ValueError(
            f"semantic_ids.codebook_sizes {list(semantic_ids.codebook_sizes)} != PrefixMem "
            f"codebook_sizes {cfg.codebook_sizes}"
        )
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if int(v) < 1:
            raise ValueError(f"{name}={v} must be >= 1")
    N, L = codes.shape
    device = next(prefixmem.parameters()).device
    codes = codes.to(device)
    trie = semantic_ids.trie
    item_nodes = torch.as_tensor(trie.item_nodes, dtype=torch.long, device=device)
    node_child = [torch.as_tensor(t, device=device) for t in trie.node_child]
    emb = None
    if item_embeddings is not None:
        emb = torch.as_tensor(np.asarray(item_embeddings), dtype=torch.float32, device=device)
        if emb.dim() != 2 or emb.shape[0] != N:
            raise ValueError(
                f"item_embeddings has shape {tuple(emb.shape)}, expected [{N}, D] (one row per item "
                "in semantic_ids order)"
            )
        emb = F.normalize(emb, dim=-1)

    d = cfg.memory_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = nn.ModuleList(nn.Linear(d, k) for k in cfg.codebook_sizes[1:]).to(device)
        content = nn.Linear(d, emb.shape[1]).to(device) if emb is not None else None
    table = prefixmem.memory.table
    dense = (
        list(prefixmem.norm.parameters())
        + list(heads.parameters())
        + (list(content.parameters()) if content else [])
    )
    opt_dense = torch.optim.Adam(dense, lr=lr)
    opt_table = torch.optim.SparseAdam([table.weight], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    levels = torch.arange(L, device=device)

    def losses(idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        c = codes[idx]  # [B, L]
        prefix = c.unsqueeze(1).expand(-1, L, -1)  # [B, L(token level), L(codes)]
        v = prefixmem.features(levels.expand(len(idx), -1), prefix)  # [B, L, memory_dim]
        logits = []
        for lv in range(L - 1):
            allowed = node_child[lv + 1][item_nodes[idx, lv + 1]] >= 0  # [B, K_{lv+1}]
            logits.append(_masked_logits(heads[lv](v[:, lv]), allowed))
        loss = sum(F.cross_entropy(lg, c[:, lv + 1]) for lv, lg in enumerate(logits))
        loss = loss / max(L - 1, 1) if L > 1 else torch.zeros((), device=device)
        cos = None
        if content is not None:
            cos = F.cosine_similarity(content(v[:, L - 1]), emb[idx], dim=-1)
            loss = loss + content_weight * (1 - cos).mean()
        return loss, logits, cos

    was_training, was_sparse = prefixmem.training, table.sparse
    prefixmem.train()
    table.sparse = True
    start = time.perf_counter()
    first = last = float("nan")
    try:
        bar = tqdm(range(steps), desc="pretrain prefixmem", disable=not progress, leave=False)
        for step in bar:
            idx = torch.randint(0, N, (min(batch_size, N),), generator=gen).to(device)
            loss, _, _ = losses(idx)
            opt_dense.zero_grad(set_to_none=True)
            opt_table.zero_grad(set_to_none=True)
            loss.backward()
            opt_dense.step()
            opt_table.step()
            last = float(loss.detach())
            if step == 0:
                first = last
            if step % 50 == 0:
                bar.set_postfix(loss=f"{last:.4f}")
        seconds = time.perf_counter() - start
        prefixmem.eval()
        metrics: dict = {"loss_first": first, "loss_last": last, "steps": steps}
        correct = torch.zeros(L - 1)
        cos_sum = 0.0
        with torch.no_grad():
            for chunk in torch.arange(N, device=device).split(4096):
                _, logits, cos = losses(chunk)
                for lv, lg in enumerate(logits):
                    correct[lv] += float((lg.argmax(-1) == codes[chunk, lv + 1]).sum())
                if cos is not None:
                    cos_sum += float(cos.sum())
        for lv in range(L - 1):
            metrics[f"next_code_acc_l{lv + 1}"] = float(correct[lv]) / N
        if content is not None:
            metrics["content_cos"] = cos_sum / N
        metrics["seconds"] = seconds
    finally:
        table.sparse = was_sparse
        prefixmem.train(was_training)
    return metrics
