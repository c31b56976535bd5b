"""What dropout costs a training step of the tiny Llama, on this machine.

Arms, each the same tiny Llama (the `ml1m` presets' model: 128 wide, 2 layers) on the same
batch, timed for one optimiser step (forward, backward, AdamW) in rounds that take the arms in
turn, so a change in the machine's load touches every arm alike:

  none        no dropout
  hidden      `sid.model.add_dropout(lm, p)`: what `train.py --dropout p` does
  attention   the same plus dropout `p` on the attention weights (the model's own
              `attention_dropout`, which `--dropout` leaves alone)

Writes the median seconds per step and each arm's ratio to `none` as JSON.

    python benchmarks/bench_dropout.py --threads 2      # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sid.model import add_dropout, tiny_config  # noqa: E402

ARMS = ("none", "hidden", "attention")


def build(arm: str, p: float, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config(vocab))
    if arm != "none":
        add_dropout(lm, p)
    if arm == "attention":
        for name, module in lm.named_modules():
            if name.endswith("self_attn"):
                module.attention_dropout = p
    return lm.train()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=400, help="tokens per sequence (100 items)")
    ap.add_argument("--vocab", type=int, default=800, help="about 3 x 256 SID tokens")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/dropout_step.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randint(0, args.vocab, (args.batch, args.tokens))
    arms = {a: build(a, args.p, args.vocab) for a in ARMS}
    optims = {a: torch.optim.AdamW(m.parameters(), lr=1e-3) for a, m in arms.items()}
    times = {a: [] for a in ARMS}
    for r in range(args.rounds + 1):  # round 0 warms up
        for a in ARMS:
            start = time.perf_counter()
            arms[a](x, labels=x).loss.backward()
            optims[a].step()
            optims[a].zero_grad()
            if r:
                times[a].append(time.perf_counter() - start)
    med = {a: statistics.median(t) for a, t in times.items()}
    result = {
        "config": vars(args),
        "torch": torch.__version__,
        "seconds_per_step": {a: round(v, 4) for a, v in med.items()},
        "ratio_to_none": {a: round(med[a] / med["none"], 3) for a in ARMS},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
