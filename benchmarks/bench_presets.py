"""The presets' headline figures on ML-1M: mean and spread over seeds, weights picked on validation.

Train each preset with two or more seeds, then score them all:

    python train.py --preset ml1m --seed 0 --run_dir runs/ml1m-s0
    python train.py --preset ml1m --seed 1 --run_dir runs/ml1m-s1
    python train.py --preset ml1m-large --seed 0 --run_dir runs/ml1m-large-s0
    python train.py --preset ml1m-large --seed 1 --run_dir runs/ml1m-large-s1
    HF_HUB_OFFLINE=1 python benchmarks/bench_presets.py runs/ml1m-s0 runs/ml1m-s1 \
        runs/ml1m-large-s0 runs/ml1m-large-s1
    # a ranking head on a trained run, then its rows (the beam weight picked on validation):
    python train.py --preset ml1m-large --seed 0 --run_dir runs/ml1m-large-s0 --ranker True \
        --ranker_dense_feature True --ranker_targets valid --ranker_exclude_history True \
        --ranker_prior_weight W      # W: 0 (the plain SID beam) or the picked prior weight
    HF_HUB_OFFLINE=1 python benchmarks/bench_presets.py runs/ml1m-large-s0
    python benchmarks/bench_presets.py --table          # the Markdown table of BENCHMARKS.md
    python benchmarks/bench_presets.py --plot benchmarks/figures/presets_recall_at_k.png
    # (--plot also draws benchmarks/results/sasrec_ml1m.json, a finished SASRec-CE record)

For every run (leave-one-out, full ranking over the whole catalogue):

1. **Validation, to pick the dense prior's weight.** The beam search is run on the validation
   targets of the first `--tune_users` users, history excluded, once per `--weights` value of
   `prior_weight` (the dense head's item scores inside the beam, at every level; 0 = the SID
   model alone). The weight with the best validation NDCG@10 is kept; test never takes part.
   While the best is the largest weight tried, twice that weight is validated too (up to 16),
   so the pick is never the edge of the grid.
2. **Test, all users**, history excluded (the headline protocol): the beam alone (weight 0)
   and the beam with the chosen weight; the same rows also hold the dense head, popularity
   and per-level accuracy (teacher-forced and beam). History kept: the chosen weight again.
3. `--curve_beams N` (default 100): the chosen weight once more with N beams and the top N
   candidates, for the Recall@K curve (K = 1 … N) of `--plot`.
4. **The ranking head**, for a run that has one (`RUN/ranker`): the beam searched with the
   prior weight the head was trained on (`--ranker_prior_weight`; its lists are what it
   learnt to rank), its candidates ranked by the head, once per `--beam_weights` value (the
   beam probability's share in the ranked score) on the same validation users; the best
   NDCG@10 of the ranked list is scored on test, beside the beam it rescored. Entries are
   named by that prior weight (`RUN|valid-rank@w=0|bw=0.5`), so heads retrained on another
   beam keep the earlier heads' rows. A head
   trained with `--ranker_targets valid` learns from the validation targets of the users
   after the first `--ranker_tune_users` (2,000, as `--tune_users` here), so none of the
   users that pick a weight was seen by it.

The table gives, per preset, the mean over its seeds and ± half the range between them.
A run trained with data, SID or model options, or weight-shaping training options (the
model stage's, less the seed), that differ from its preset (an ablation arm, e.g. `--preset ml1m
--prefixmem True` or `--label_smoothing_factor 0.1`) is labelled `ml1m + prefixmem=True` and
gets rows of its own.
Each evaluation stores the run's options, and the label is worked out against today's presets:
once a preset switches an option on, the runs trained without it read `+ prefixmem=False`.
Benching a run again adds the options to its entries stored before they were kept.
Every evaluation is stored in `--json` as soon as it finishes; a re-run reuses those
already there (`--redo` evaluates again).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

KINDS = ("retrieval", "retrieval+ranking", "dense", "popularity")
MAX_PRIOR_WEIGHT = 16.0
KEEP = (
    "split",
    "users",
    "num_beams",
    "top_k",
    "prior_weight",
    "exclude_history",
    "per_level_accuracy",
    "latency",
    "recall_curve",
    "beam_weight",
    "eval_seconds",
    "model_fingerprint",
)
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


# The run's data, SID and model options that name an ablation arm; the ranker's own options
# are left out (its rows are already separate) and so are the run's paths and threads.
SECTIONS = {"data": "DataArguments", "sid": "SIDArguments", "model": "ModelArguments"}
# The training options that shape the weights (the model stage's key) name an arm too, less the
# seed: `--label_smoothing_factor 0.1` is an arm, another seed of it is not.
NOT_AN_ARM = ("seed", "data_seed")


def _training_arm(training_arguments: dict) -> dict:
    from sid.run.stages import WEIGHT_OPTIONS

    names = [k for k in WEIGHT_OPTIONS if k not in NOT_AN_ARM]
    return {k: training_arguments[k] for k in names if k in training_arguments}


@functools.cache  # one TrainingArguments per preset, not one per labelled entry
def _preset_training(preset: str) -> dict:
    """The weight-shaping training options `preset` gives, as a run stores them (read only)."""
    from sid.run import arguments
    from sid.run.stages import weight_options

    parsed = arguments.arguments_from_dict(dict(arguments.PRESETS[preset]))
    targs = next(a for a in parsed if isinstance(a, arguments.SIDTrainingArguments))
    return _training_arm(weight_options(targs))


def preset_label(options: dict) -> str | None:
    """The run's preset, followed by every data, SID or model option that differs from what the
    preset gives (e.g. `ml1m + prefixmem=True`), so an ablation arm is never averaged into its
    preset's rows."""
    from dataclasses import MISSING, fields

    from sid.run import arguments

    preset = options.get("run", {}).get("preset")
    if preset not in arguments.PRESETS:
        return preset
    given = arguments.PRESETS[preset]
    changed = []
    for section, cls in SECTIONS.items():
        for f in fields(getattr(arguments, cls)):
            if f.name not in options.get(section, {}) or f.name.startswith("ranker"):
                continue
            if f.name in given:
                expected = given[f.name]
            elif f.default is not MISSING:
                expected = f.default
            elif f.default_factory is not MISSING:
                expected = f.default_factory()
            else:
                continue
            value = options[section][f.name]
            if str(value) != str(expected):
                changed.append(f"{f.name}={value}")
    if options.get("training"):  # arms stored before training options named arms have none
        expected = _preset_training(preset)
        for name, value in options["training"].items():
            if name in expected and str(value) != str(expected[name]):
                changed.append(f"{name}={value}")
    return " + ".join([preset, *changed])


def arm(options: dict) -> dict:
    """The options that name a run's arm: its preset and its data, SID and model options
    (the ranker's left out). Stored with each evaluation, so the label is worked out against
    the presets of the day: when a preset takes up an option (PrefixMem on, say), the runs
    trained before it read `preset + prefixmem=False` instead of passing for the new preset."""
    out = {"run": {"preset": options.get("run", {}).get("preset")}}
    for section in SECTIONS:
        given = options.get(section, {})
        out[section] = {k: v for k, v in given.items() if not k.startswith("ranker")}
    if "training_arguments" in options:
        out["training"] = _training_arm(options["training_arguments"])
    return out


def label(res: dict) -> str | None:
    """A stored evaluation's arm label: from its options where stored, else as stored."""
    return preset_label(res["arm"]) if "arm" in res else res.get("preset")


def summary(results: dict) -> dict:
    """The stored part of one `evaluate_run` result, plus the run's preset, seed and cost."""
    options = results.get("options", {})
    training = results.get("training") or {}
    row = {k: results[k] for k in KEEP if k in results}
    row.update({k: results[k] for k in KINDS if k in results})
    row["arm"] = arm(options)
    row["preset"] = preset_label(row["arm"])  # as labelled on the day it was benched
    row["seed"] = options.get("training_arguments", {}).get("seed")
    row["train_seconds"] = training.get("train_seconds")
    row["best_step"] = training.get("best_step")
    row["global_step"] = training.get("global_step")
    if "retrieval+ranking" in results and training.get("ranker"):
        row["ranker"] = training["ranker"]
    return row


def _best(scores: dict[float, float]) -> float:
    """The value with the highest score; the smaller value on a tie."""
    return max(sorted(scores), key=scores.get)


def _best_on_validation(done: dict, names: dict[float, str], kind: str) -> float | None:
    """The value whose stored validation entry has the best NDCG@10 of row `kind` (the
    smaller value on a tie), or None until every value has been validated."""
    scores = {}
    for value, name in names.items():
        if name not in done:
            return None
        scores[value] = done[name][kind]["ndcg@10"]
    return _best(scores)


def chosen_weight(done: dict, run: str, weights: list[float]) -> float | None:
    """The prior weight with the best validation NDCG@10 of the beam."""
    return _best_on_validation(done, {w: f"{run}|valid|w={w:g}" for w in weights}, "retrieval")


def weight_grid(done: dict, run: str, weights: list[float]) -> list[float]:
    """The prior weights to validate: `weights`, then twice the largest for as long as the
    largest is validation's best (up to `MAX_PRIOR_WEIGHT`), so the weight picked is not the
    edge of the grid. The last weight may not be validated yet."""
    grid = sorted(set(weights))
    while True:
        best = chosen_weight(done, run, grid)
        if best is None or best != grid[-1] or not 0 < 2 * best <= MAX_PRIOR_WEIGHT:
            return grid
        grid.append(2 * best)


def head_key(run: str) -> str:
    """The identity of the ranking head a run holds now: a hash of its weights."""
    import hashlib

    return hashlib.sha256(Path(run, "ranker", "model.safetensors").read_bytes()).hexdigest()[:16]


def fresh(name: str, stored: dict, ranker_key: str | None) -> bool:
    """False for a ranking-head entry of another head than the run's (`ranker_key`, from
    `head_key`): the run's head was retrained since."""
    return "-rank@" not in name or stored.get("ranker_key") == ranker_key


def chosen_beam_weight(
    done: dict, run: str, beam_weights: list[float], prior_weight: float
) -> float | None:
    """The ranking head's beam weight with the best validation NDCG@10 of the ranked list of
    the beam searched with `prior_weight`."""
    names = {bw: f"{run}|valid-rank@w={prior_weight:g}|bw={bw:g}" for bw in beam_weights}
    return _best_on_validation(done, names, "retrieval+ranking")


def plan(
    run: str,
    weights: list[float],
    done: dict,
    curve_beams: int,
    beam_weights: list[float] | None = None,
    rank_prior: float | None = None,
):
    """(name, evaluate_run options) still to run for `run`, in order; the test entries
    appear once the validation sweep that picks their weight is complete. `beam_weights`
    (a run with a ranking head): the head's sweep on validation, then its test entry, on the
    beam searched with `rank_prior` (the prior weight the head was trained on; None: the
    weight validation picked), and that beam's own test entry to compare with."""
    plain = dict(rerank=False)
    weights = weight_grid(done, run, weights)
    for w in weights:
        yield f"{run}|valid|w={w:g}", dict(split_name="valid", prior_weight=w, tune=True, **plain)
    best = chosen_weight(done, run, weights)
    if best is None:
        return
    yield f"{run}|test|w=0", dict(split_name="test", prior_weight=0.0, **plain)
    if best != 0:
        yield f"{run}|test|w={best:g}", dict(split_name="test", prior_weight=best, **plain)
    yield (
        f"{run}|test-kept|w={best:g}",
        dict(split_name="test", prior_weight=best, exclude_history=False, **plain),
    )
    if curve_beams:
        yield (
            f"{run}|curve|w={best:g}",
            dict(
                split_name="test",
                prior_weight=best,
                num_beams=curve_beams,
                top_k=curve_beams,
                **plain,
            ),
        )
    if not beam_weights:
        return
    pw = best if rank_prior is None else rank_prior
    if pw not in (0, best):
        yield f"{run}|test|w={pw:g}", dict(split_name="test", prior_weight=pw, **plain)
    ranked = dict(prior_weight=pw, rerank=True)
    for bw in beam_weights:
        yield (
            f"{run}|valid-rank@w={pw:g}|bw={bw:g}",
            dict(split_name="valid", beam_weight=bw, tune=True, **ranked),
        )
    pick = chosen_beam_weight(done, run, beam_weights, pw)
    if pick is not None:
        yield (
            f"{run}|test-rank@w={pw:g}|bw={pick:g}",
            dict(split_name="test", beam_weight=pick, **ranked),
        )


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.4f} ± {half:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _levels(rows: list[dict], kind: str) -> str:
    accs = [r["per_level_accuracy"][kind] for r in rows if r.get("per_level_accuracy")]
    if not accs:
        return "–"
    return " / ".join(f"{sum(a[i] for a in accs) / len(accs):.3f}" for i in range(len(accs[0])))


def _by_preset(done: dict) -> dict[str, dict[str, dict]]:
    """preset → run → {"valid": {w: …}, "best": w, "test": …, "test0": …, "kept": …, "curve":
    …, "rank": {w: …}, "valid_rank": {w: {bw: …}}}: the test entries are the ones at the prior
    weight validation picked (the largest stored, for a run without validation entries); the
    ranking head's, per prior weight of the beam it ranked."""
    out: dict[str, dict[str, dict]] = {}
    for name, res in done.items():
        run, part, weight = name.split("|")
        w = float(weight.split("=")[1])
        part, _, prior = part.partition("@w=")
        entry = out.setdefault(label(res) or run, {}).setdefault(run, {})
        if part.endswith("-rank"):
            pw = float(prior) if prior else float(res.get("prior_weight") or 0.0)
            entry.setdefault(part, {}).setdefault(pw, {})[w] = res
        else:
            entry.setdefault(part, {})[w] = res
    for runs in out.values():
        for run, parts in runs.items():
            valid = parts.get("valid", {})
            tests = parts.get("test", {})
            if valid:
                best = _best({w: r["retrieval"]["ndcg@10"] for w, r in valid.items()})
            else:
                best = max(tests) if tests else None
            entry = {"valid": valid, "best": best} if valid else {"best": best}
            if 0.0 in tests:
                entry["test0"] = tests[0.0]
            for part, key in (("test", "test"), ("test-kept", "kept"), ("curve", "curve")):
                if best in parts.get(part, {}):
                    entry[key] = parts[part][best]
            if "test" not in entry and 0.0 in tests:
                entry["test"] = tests[0.0]  # until the picked weight's test is stored
            entry["valid_rank"] = parts.get("valid-rank", {})
            entry["rank"] = {}
            for pw, by_bw in parts.get("test-rank", {}).items():
                sweep = entry["valid_rank"].get(pw, {})
                score = {bw: r["retrieval+ranking"]["ndcg@10"] for bw, r in sweep.items()}
                pick = _best(score) if score else max(by_bw)
                if pick in by_bw:  # the test entry of the beam weight validation picked
                    entry["rank"][pw] = by_bw[pick]
            runs[run] = entry
    return out


def tables(done: dict) -> str:
    """The Markdown tables of BENCHMARKS.md from the stored evaluations."""
    cols = ["Recall@10", "NDCG@10", "Recall@20", "NDCG@20"]
    lines = [
        "| preset (seeds) | protocol | row | " + " | ".join(cols) + " | per-level acc. |",
        "|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    notes = []
    for preset, runs in _by_preset(done).items():
        entries = [e for e in runs.values() if "test" in e]
        if not entries:
            continue
        weights = [e["test"].get("prior_weight", 0.0) for e in entries]
        rows = [
            ("excluded", "beam", [e["test0"] for e in entries if "test0" in e], "retrieval"),
            ("excluded", "beam + dense prior", [e["test"] for e in entries], "retrieval"),
            (
                "excluded",
                "beam + ranking head",
                [e["rank"][0.0] for e in entries if 0.0 in e["rank"]],
                "retrieval+ranking",
            ),
            (
                "excluded",
                "beam + dense prior + ranking head",
                [e["rank"][e["best"]] for e in entries if e["best"] and e["best"] in e["rank"]],
                "retrieval+ranking",
            ),
            ("excluded", "dense head", [e["test"] for e in entries], "dense"),
            ("excluded", "popularity", [e["test"] for e in entries], "popularity"),
            (
                "kept",
                "beam + dense prior",
                [e["kept"] for e in entries if "kept" in e],
                "retrieval",
            ),
            ("kept", "dense head", [e["kept"] for e in entries if "kept" in e], "dense"),
        ]
        for protocol, shown, results, kind in rows:
            results = [r for r in results if kind in r]
            if not results:
                continue
            cells = [_mean_spread([r[kind][m] for r in results]) for m in METRICS]
            if kind in ("retrieval", "retrieval+ranking"):
                levels = f"TF {_levels(results, 'teacher_forced')}; beam {_levels(results, 'beam')}"
            else:
                levels = ""
            label = f"`{preset}` ({len(results)})"  # the seeds that have this row
            lines.append(
                f"| {label} | {protocol} | {shown} | " + " | ".join(cells) + f" | {levels} |"
            )
        minutes = [
            e["test"]["train_seconds"] / 60 for e in entries if e["test"].get("train_seconds")
        ]
        steps = [
            f"{e['test']['best_step']}/{e['test']['global_step']}"
            for e in entries
            if e["test"].get("best_step")
        ]
        lat = [e["test"]["latency"]["per_user_ms"] for e in entries if e["test"].get("latency")]
        sweeps = []
        for run, e in runs.items():
            if "valid" in e:
                sweep = ", ".join(
                    f"{w:g}: {r['retrieval']['ndcg@10']:.4f}" for w, r in sorted(e["valid"].items())
                )
                sweeps.append(f"{Path(run).name} ({sweep})")
        note = (
            f"`{preset}`: prior weights chosen on validation {', '.join(f'{w:g}' for w in weights)}"
        )
        if sweeps:
            note += f" (validation NDCG@10 per weight: {'; '.join(sweeps)})"
        if minutes:
            note += f"; training {', '.join(f'{m:.1f}' for m in minutes)} min"
        if steps:
            note += f"; best validated step / steps run {', '.join(steps)}"
        if lat:
            note += f"; beam {', '.join(f'{x:.1f}' for x in lat)} ms per user"
        for pw in sorted({pw for e in entries for pw in e["rank"]}):
            ranked = [e["rank"][pw] for e in entries if pw in e["rank"]]
            lifts = [
                r["retrieval+ranking"]["ndcg@10"] / r["retrieval"]["ndcg@10"] - 1 for r in ranked
            ]
            picked = ", ".join(f"{r.get('beam_weight') or 0.0:g}" for r in ranked)
            note += (
                f"; ranking head on the beam with prior weight {pw:g}: beam weights chosen on "
                f"validation {picked}, NDCG@10 over its own beam "
                f"{', '.join(f'{x:+.1%}' for x in lifts)}"
            )
            for run, e in runs.items():
                if pw in e.get("valid_rank", {}):
                    sweep = ", ".join(
                        f"{bw:g}: {r['retrieval+ranking']['ndcg@10']:.4f}"
                        for bw, r in sorted(e["valid_rank"][pw].items())
                    )
                    note += f" ({Path(run).name} validation NDCG@10 per beam weight: {sweep})"
        notes.append(note + ".")
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)])


def plot(done: dict, path: Path, sasrec: dict | None = None) -> None:
    """Recall@K, K = 1 … depth: the beam (with its chosen prior) next to the dense head and
    popularity, averaged over each preset's seeds; with `sasrec` (the `sasrec.json` record of
    a finished `bench_quality.py` run) also the converged SASRec-CE's test curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for preset, runs in _by_preset(done).items():
        curves = [e["curve"]["recall_curve"] for e in runs.values() if "curve" in e]
        if not curves:
            continue
        for kind, style in (("retrieval", "-"), ("dense", "--"), ("popularity", ":")):
            rows = [c[kind] for c in curves if kind in c]
            if not rows or (kind == "popularity" and preset != next(iter(_by_preset(done)))):
                continue
            depth = min(len(r) for r in rows)
            mean = [sum(r[i] for r in rows) / len(rows) for i in range(depth)]
            name = {"retrieval": "beam + dense prior", "dense": "dense head"}.get(kind, kind)
            shown = name if kind == "popularity" else f"{preset}: {name}"
            ax.plot(range(1, depth + 1), mean, style, label=shown)
    if sasrec is not None:
        curve = sasrec.get("test", {}).get("recall_curve")
        if not curve:
            raise ValueError(
                "the SASRec-CE record has no test recall_curve: it was scored before "
                "bench_quality.py stored one; score its run again"
            )
        best = sasrec.get("best_epoch")
        ax.plot(range(1, len(curve) + 1), curve, "-.", label=f"SASRec-CE (best epoch {best})")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (history excluded)")
    ax.set_title("ML-1M, leave-one-out, full ranking, all users")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


@contextmanager
def _locked(folder: Path):
    """An exclusive lock on `folder` (POSIX `flock`; where there is none, no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _update(path: Path, change) -> dict:
    """Apply `change(done) -> bool` (True: something changed) to the stored evaluations and
    return them. The file is read again under a lock and replaced atomically, so benches of
    several runs can run side by side without one dropping the entries the other wrote
    meanwhile."""
    from sid.artifacts import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        done = json.loads(path.read_text()) if path.is_file() else {}
        if change(done):
            write_json_atomic(path, done, indent=1)
    return done


def store(path: Path, name: str, entry: dict) -> dict:
    """Add one evaluation to the stored file and return all stored evaluations."""
    return _update(path, lambda done: done.update({name: entry}) or True)


def store_arm(path: Path, run: str, options: dict) -> dict:
    """Give the stored evaluations of `run` that were benched before arms were stored the
    arm of the run's options (its `config.json`)."""

    def change(done: dict) -> bool:
        names = [n for n, res in done.items() if n.split("|")[0] == run and "arm" not in res]
        for name in names:
            done[name]["arm"] = arm(options)
        return bool(names)

    return _update(path, change)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="train.py run directories")
    p.add_argument(
        "--json",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "presets.json",
        help="the stored evaluations (kept in the repository, so a later checkout has them)",
    )
    p.add_argument("--weights", default="0,0.5,1,2", help="prior weights to validate")
    p.add_argument(
        "--beam_weights",
        default="0,0.5,0.75,0.9,1",
        help="the ranking head's beam weights to validate (runs with a ranking head; 1 is the "
        "beam alone, so validation can turn the head off)",
    )
    p.add_argument("--tune_users", type=int, default=2000)
    p.add_argument("--num_beams", type=int, default=20)
    p.add_argument("--top_k", type=int, default=20)
    p.add_argument("--curve_beams", type=int, default=100, help="0: no curve evaluation")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--redo", action="store_true")
    p.add_argument("--table", action="store_true", help="print the Markdown table and stop")
    p.add_argument("--plot", type=Path, help="write the Recall@K figure here and stop")
    p.add_argument(
        "--sasrec",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "sasrec_ml1m.json",
        help="with --plot: a finished SASRec-CE record (bench_quality.py's sasrec.json) to "
        "draw beside (skipped when the file does not exist)",
    )
    args = p.parse_args()
    if args.table or args.plot:
        if not args.json.is_file():
            p.error(f"{args.json}: no evaluations stored yet; run with run directories first")
        done = json.loads(args.json.read_text())
        if args.table:
            print(tables(done))
        if args.plot:
            sasrec = json.loads(args.sasrec.read_text()) if args.sasrec.is_file() else None
            plot(done, args.plot, sasrec)
        return
    if not args.runs:
        p.error("give the run directories to evaluate (or --table / --plot)")
    try:
        weights = [float(w) for w in args.weights.split(",") if w.strip()]
    except ValueError:
        p.error(f"--weights must be comma-separated numbers, got {args.weights!r}")
    if not weights or any(w < 0 for w in weights):
        p.error(f"--weights must be non-negative numbers, got {args.weights!r}")
    try:
        beam_weights = [float(w) for w in args.beam_weights.split(",") if w.strip()]
    except ValueError:
        p.error(f"--beam_weights must be comma-separated numbers, got {args.beam_weights!r}")
    if not beam_weights or any(not 0 <= w <= 1 for w in beam_weights):
        p.error(f"--beam_weights must be numbers in [0, 1], got {args.beam_weights!r}")
    missing = [r for r in args.runs if not Path(r, "model").is_dir()]
    if missing:
        p.error(f"not trained (no model/ folder): {', '.join(missing)}")

    import torch

    from sid.evaluation import evaluate_run

    if args.threads:
        torch.set_num_threads(args.threads)
    done = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for run in args.runs:
        run = str(Path(run))
        ranks = beam_weights if Path(run, "ranker", "config.json").is_file() else None
        config = json.loads(Path(run, "config.json").read_text())
        rank_prior = config.get("model", {}).get("ranker_prior_weight") if ranks else None
        # the head the run holds now: entries of an earlier head of the run are evaluated again
        ranker_key = head_key(run) if ranks else None
        if args.json.is_file():
            done = store_arm(args.json, run, config)
        redone: set[str] = set()
        while True:  # the test entries appear once the sweep that picks their weight is done
            current = {n: r for n, r in done.items() if fresh(n, r, ranker_key)}
            todo = [
                (n, o)
                for n, o in plan(run, weights, current, args.curve_beams, ranks, rank_prior)
                if n not in redone and (args.redo or n not in current)
            ]
            if not todo:
                break
            name, options = todo[0]
            tune = options.pop("tune", False)
            options.setdefault("num_beams", args.num_beams)
            options.setdefault("top_k", args.top_k)
            results = evaluate_run(
                run,
                max_users=args.tune_users if tune else None,
                write_report=False,
                **options,
            )
            row = summary(results)
            if "-rank@" in name:
                row["ranker_key"] = ranker_key
            done = store(args.json, name, row)
            redone.add(name)
            head = results["retrieval"]
            print(
                f"{name}: beam recall@10 {head['recall@10']:.4f} ndcg@10 {head['ndcg@10']:.4f}, "
                f"dense recall@10 {results.get('dense', {}).get('recall@10', float('nan')):.4f} "
                f"({results['eval_seconds']:.0f} s)",
                flush=True,
            )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
