"""Ranking cost: reusing retrieval's history states vs re-encoding the history.

For a batch of users with ML-100K-sized histories (50 items x 4 tokens = 200 tokens), one
constrained beam search proposes 100 candidates; the ranking head then scores them

- **reuse**: from the beam search's own prefill states (``BeamSearchOutput.history_states``),
  which is what :func:`sid.ranking.retrieve_and_rank` does;
- **re-encode** (the naive way): a second forward of the history through the LM for the
  ranker, then the same head.

Both paths are timed side by side in one run (interleaved, median of ``--repeats``), and the
script prints the time ratio, the share that ranking adds to retrieval's latency, and a check
that both paths give the same scores. The head is untrained: its cost does not depend on its
weights.

    HF_HUB_OFFLINE=1 python benchmarks/bench_ranking.py --model tiny
    HF_HUB_OFFLINE=1 python benchmarks/bench_ranking.py --model smollm2-135m --users 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# run from a checkout without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_beam_search import random_codes  # same folder: on sys.path when run as a script

from sid.codes import SemanticIDs
from sid.model import SIDRecModel
from sid.ranking import (
    RankingHead,
    RankingHeadConfig,
    encode_history,
    history_inputs,
    rank_candidates,
    retrieve_and_rank,
)
from sid.retrieval import BeamSearchConfig


def random_catalogue(n_items: int, sizes: list[int], seed: int) -> SemanticIDs:
    """n_items unique random SIDs (no collision level), like a 3-level RQ codebook."""
    return SemanticIDs.from_codes(
        random_codes(n_items, sizes, seed),
        [str(i) for i in range(n_items)],
        codebook_sizes=sizes,
        policy="reassign",
        distances=torch.zeros(n_items, sizes[-1]),
        collision_level=False,
    )


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny', 'smollm2-135m' or a model folder")
    p.add_argument("--users", type=int, default=16, help="users per batch")
    p.add_argument("--history", type=int, default=50, help="items per history")
    p.add_argument("--candidates", type=int, default=100, help="beams = candidates ranked")
    p.add_argument("--items", type=int, default=1682, help="catalogue size (ML-100K: 1682)")
    p.add_argument("--codebook", type=int, nargs="+", default=[256, 256, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sids = random_catalogue(args.items, args.codebook, seed=0)
    model = SIDRecModel.build(args.model, sids, ["like", "watch"])
    lm, vocab = model.lm.eval(), model.vocab
    hidden = lm.config.get_text_config().hidden_size
    head = RankingHead(
        RankingHeadConfig(hidden_size=hidden, num_levels=vocab.num_levels, outcomes=vocab.outcomes)
    ).eval()

    g = torch.Generator().manual_seed(1)
    B, M = args.users, args.history
    hist = torch.randint(args.items, (B, M), generator=g)
    outcomes = torch.randint(2, (B, M), generator=g)
    ids, mask = history_inputs(vocab, sids.codes, hist, outcomes)
    beam = BeamSearchConfig(num_beams=args.candidates, outcome="like")

    def retrieve():
        return beam.search(lm, vocab, sids.trie, ids, mask, hist)

    def rank(states, beams):
        return rank_candidates(
            head, lm, vocab, sids, states, mask, beams.items, beam_scores=beams.scores
        )

    def rank_reencode(beams):
        with torch.no_grad():
            states = encode_history(lm, ids, mask)
        return rank(states, beams)

    times = {"retrieval": [], "reuse": [], "reencode": [], "retrieve_and_rank": []}
    with torch.no_grad():
        retrieve()  # warm-up
        for _ in range(args.repeats):
            beams, t = timed(retrieve)
            times["retrieval"].append(t)
            reused, t = timed(lambda b=beams: rank(b.history_states, b))
            times["reuse"].append(t)
            naive, t = timed(lambda b=beams: rank_reencode(b))
            times["reencode"].append(t)
            _, t = timed(
                lambda: retrieve_and_rank(
                    lm, vocab, sids, head, ids, mask, beam=beam, exclude_items=hist
                )
            )
            times["retrieve_and_rank"].append(t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    real = reused.items >= 0
    diff = (reused.final_scores[real] - naive.final_scores[real]).abs().max().item()
    same_order = torch.equal(reused.items, naive.items)

    n_params = sum(p.numel() for p in lm.parameters()) / 1e6
    head_params = sum(p.numel() for p in head.parameters()) / 1e6
    print(
        f"model={args.model} ({n_params:.1f}M params, H={hidden}), head {head_params:.2f}M params, "
        f"users={B}, history={M} items x {vocab.num_levels + 1} tokens = {ids.shape[1]} tokens, "
        f"candidates={args.candidates}, catalogue={args.items}, threads={args.threads}, "
        f"median of {args.repeats}"
    )
    print("| step | ms per batch | ms per user |")
    print("|---|---|---|")
    rows = [
        ("retrieval (beam search, one prefill)", med["retrieval"]),
        ("ranking, reused states", med["reuse"]),
        ("ranking, re-encoded history (naive)", med["reencode"]),
        ("retrieve_and_rank end to end", med["retrieve_and_rank"]),
    ]
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {ms / B:.2f} |")
    print(f"re-encode / reuse time ratio: {med['reencode'] / med['reuse']:.1f}x")
    share = med["reuse"] / (med["retrieval"] + med["reuse"])
    naive_share = med["reencode"] / (med["retrieval"] + med["reencode"])
    print(
        f"ranking's share of retrieval+ranking latency: {share:.1%} with reuse, "
        f"{naive_share:.1%} re-encoding"
    )
    print(f"same order both ways: {same_order}; max |final score difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
