"""Evaluate a trained run: full-ranking retrieval (+ rescoring) → report/ in the run directory.

    python eval.py runs/quickstart
    python eval.py runs/quickstart --split valid --num_beams 50 --top_k 20
    python eval.py --compare runs/a runs/b
    python eval.py runs/h10 --protocol window          # a run trained with --holdout 10
    python eval.py runs/ml1m --outcome like:15,watch:5  # a budget of candidates per outcome
    accelerate launch --num_processes 4 eval.py runs/ml1m   # users split over 4 processes/GPUs

The target is each user's last item (test) or second-to-last (valid); every item of the
catalogue is ranked and, by default, the items already in the user's history are excluded
(the protocol of the published ML-1M figures; --keep_history True keeps them).

Under `accelerate launch` the users are split between the processes (each on its own GPU, or
the CPU with --cpu), their results are gathered, and the main process alone logs, prints and
writes the one report, whose metrics equal a single process's.
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse(argv: list[str]):
    from sid.run.arguments import EvalArguments, make_parser

    parser = make_parser((EvalArguments,), description=__doc__)
    if argv and not argv[0].startswith("-"):
        argv = ["--run_dir", argv[0], *argv[1:]]  # `eval.py RUN_DIR …`
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if not args.compare and not args.run_dir:
        parser.error("give a run directory, or --compare RUN RUN …")
    return args


def parse_outcome(text: str | None) -> str | dict[str, int] | None:
    """`--outcome like` → "like"; `--outcome like:15,watch:5` → {"like": 15, "watch": 5}."""
    if text is None or ":" not in text:
        return text
    budget = {}
    for part in text.split(","):
        label, _, count = part.partition(":")
        try:
            budget[label.strip()] = int(count)
        except ValueError:
            raise ValueError(
                f"--outcome {text}: a budget is label:count pairs, e.g. like:15,watch:5"
            ) from None
    return budget


def process_rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 for a lone process)."""
    return int(os.environ.get("RANK", "0"))


def main(argv: list[str] | None = None) -> None:
    main_process = process_rank() == 0
    logging.basicConfig(format="[sid] %(message)s")
    # the main process speaks for all of them; the others report only warnings and errors
    logging.getLogger("sid").setLevel(logging.INFO if main_process else logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file save/load bars; the stages keep their own
    if not main_process:
        hf_logging.set_verbosity_error()
    args = parse(sys.argv[1:] if argv is None else argv)

    import torch

    from sid.evaluation import evaluate_run
    from sid.report import compare_runs

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.compare:
            if main_process:
                print(compare_runs(args.compare))
            return
        results = evaluate_run(
            args.run_dir,
            split_name=args.split,
            num_beams=args.num_beams,
            top_k=args.top_k,
            batch_size=args.batch_size,
            outcome=parse_outcome(args.outcome),
            exclude_history=not args.keep_history,
            max_users=args.max_users,
            rerank=args.rerank,
            device=args.device,
            beam_weight=args.beam_weight,
            dense_beam_weight=args.dense_beam_weight,
            protocol=args.protocol,
            window=args.window,
            slots=args.slots,
            prior_weight=args.prior_weight,
        )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}" if main_process else f"error (process {process_rank()}): {err}")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # a gloo/nccl group left to the interpreter's exit can abort the process
            torch.distributed.destroy_process_group()
    if not main_process:
        return  # the main process prints the results and wrote the report
    kinds = ("retrieval", "retrieval+ranking", "dense", "dense+beam", "popularity")
    short = {k: results[k] for k in kinds if k in results}
    if results.get("outcome_mix"):
        short["outcome_mix"] = results["outcome_mix"]
    print(
        json.dumps(
            {
                **short,
                "per_level_accuracy": results["per_level_accuracy"],
                "validity": results["validity"],
                "latency": results["latency"],
            },
            indent=1,
        )
    )
    print(f"Report: {os.path.join(args.run_dir, 'report', 'report.md')}")


if __name__ == "__main__":
    main()
