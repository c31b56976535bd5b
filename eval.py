"""Evaluate a trained run: full-ranking retrieval (+ rescoring) → report/ in the run directory.

python eval.py runs/quickstart
python eval.py runs/quickstart --split valid --num_beams 50 --top_k 20
python eval.py --compare runs/a runs/b
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", nargs="?", help="Run directory written by train.py.")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="Targets.")
    parser.add_argument("--num_beams", type=int, default=20, help="Beams per user.")
    parser.add_argument("--top_k", type=int, default=20, help="Candidates per user.")
    parser.add_argument("--batch_size", type=int, default=64, help="Users per batch.")
    parser.add_argument(
        "--outcome", default=None, help="Outcome to condition on (default: most frequent)."
    )
    parser.add_argument(
        "--keep_history", action="store_true", help="Allow items already in the history."
    )
    parser.add_argument(
        "--max_users", type=int, default=None, help="Evaluate only the first N users."
    )
    parser.add_argument("--no_rerank", action="store_true", help="Skip the ranking head.")
    parser.add_argument(
        "--beam_weight",
        type=float,
        default=0.5,
        help="Share of the (renormalised) beam probability in the ranked score, 0..1.",
    )
    parser.add_argument(
        "--dense_beam_weight",
        type=float,
        default=None,
        help="Runs with a dense head: share of the beam log-prob in dense + beam fusion.",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cpu).")
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN", help="Put saved reports side by side."
    )
    args = parser.parse_args(argv)

    from sid.evaluation import evaluate_run
    from sid.report import compare_runs

    try:
        if args.compare:
            print(compare_runs(args.compare))
            return
        if not args.run_dir:
            parser.error("give a run directory, or --compare RUN RUN …")
        results = evaluate_run(
            args.run_dir,
            split_name=args.split,
            num_beams=args.num_beams,
            top_k=args.top_k,
            batch_size=args.batch_size,
            outcome=args.outcome,
            exclude_history=not args.keep_history,
            max_users=args.max_users,
            rerank=not args.no_rerank,
            device=args.device,
            beam_weight=args.beam_weight,
            **(
                {}
                if args.dense_beam_weight is None
                else {"dense_beam_weight": args.dense_beam_weight}
            ),
        )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    short = {k: results[k] for k in ("retrieval", "popularity") if k in results}
    if "retrieval+ranking" in results:
        short["retrieval+ranking"] = results["retrieval+ranking"]
    for kind in ("dense", "dense+beam"):
        if kind in results:
            short[kind] = results[kind]
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
    print(f"Report: {args.run_dir}/report/report.md")


if __name__ == "__main__":
    main()
