"""One serving object: a trained run directory → the top items for users' histories.

    rec = Recommender.from_run("runs/quickstart")
    top = rec.recommend([["m1", "m7", "m3"], ["m2"]], k=10)
    top.items[0]  # ten catalogue item ids for the first user, best first

`Recommender.from_run` loads every part of a run ONCE — the LM with its semantic IDs, PrefixMem
and dense head (`SIDRecModel.from_pretrained`), and the ranking head under `RUN/ranker` — and
checks that they belong together. `recommend` takes item ids (the catalogue's own strings) and
answers with item ids; `retrieve` is the same step on token tensors, returning everything
evaluation reads (beam candidates with codes and scores, the ranked list, dense scores, the
history states), so `sid.evaluation.evaluate_run` is a loop over user batches around it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import FloatTensor, LongTensor

from sid.dense import DENSE_BEAM_WEIGHT
from sid.model import SIDRecModel
from sid.ranking import DEFAULT_BEAM_WEIGHT, RankedOutput, history_inputs
from sid.retrieval import BeamSearchConfig, BeamSearchOutput, resolve_slots

logger = logging.getLogger(__name__)

METHODS = ("beam", "beam+ranking", "dense", "dense+beam")
# users per forward pass, in `Recommender.recommend` and `sid.evaluation.evaluate_run`
BATCH_SIZE = 64


# --------------------------------------------------------------------------- run directory
def read_run_config(run_dir: Path) -> dict:
    """`RUN/config.json` as a dict; clear errors for a missing or corrupt file, or one that
    lacks the data options or the model's history window (`"model" → "max_items"`)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: is {run_dir} a run directory of train.py?"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is corrupt: {err}") from err
    try:
        dict(config["data"])
        if int(config["model"]["max_items"]) < 1:
            raise ValueError(f"max_items={config['model']['max_items']}")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{config_path} lacks the run's data or model options ({err!r}); re-run train.py"
        ) from err
    return config


def check_ranker_binding(run_dir: Path, rec: SIDRecModel) -> None:
    """Refuse a ranking head that was trained on top of another model than `rec`."""
    from sid.run.rundir import RANKER_BINDING

    binding = Path(run_dir) / "ranker" / RANKER_BINDING
    if not binding.exists():
        return  # a head saved outside train.py: nothing recorded to check
    try:
        trained_for = json.loads(binding.read_text(encoding="utf-8")).get("model_fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{binding} is corrupt ({err}); retrain the head with --ranker") from err
    if rec.fingerprint is not None and trained_for != rec.fingerprint:
        raise ValueError(
            f"{Path(run_dir) / 'ranker'} was trained on model {trained_for}, but "
            f"{Path(run_dir) / 'model'} is model {rec.fingerprint}; retrain the head "
            "(train.py --ranker) or pass --no_rerank"
        )


def _check_ranker_fits(path: Path, ranker, rec: SIDRecModel) -> None:
    """The head reads this LM's states and SID embeddings and predicts this vocab's outcomes."""
    cfg = ranker.config
    hidden = int(rec.lm.config.get_text_config().hidden_size)
    wanted = {
        "hidden_size": hidden,
        "num_levels": rec.vocab.num_levels,
        "outcomes": list(rec.vocab.outcomes),
    }
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise ValueError(
                f"{path} is a ranking head with {name}={getattr(cfg, name)!r}, but the run's "
                f"model has {value!r}: it belongs to another model; retrain it (train.py "
                "--ranker) or pass rerank=False"
            )
    if cfg.score_features >= 2 and rec.dense is None:
        raise ValueError(
            f"{path} is a ranking head that reads the dense head's scores, but the run has no "
            "dense head (train.py --dense); retrain the head or pass rerank=False"
        )


# --------------------------------------------------------------------------- histories
def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences → (input_ids [B, T], attention_mask [B, T]), padded on the left."""
    longest = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, longest - len(seq) :] = seq
            mask[row, longest - len(seq) :] = 1
    return ids, mask


def _right_aligned(arrays: Sequence[np.ndarray], window: int | None) -> LongTensor:
    """Ragged int arrays → LongTensor[B, M]: each row's last `window` values (all when None)
    right-aligned, -1 on the left; M is the longest kept row."""
    kept = [np.asarray(a, dtype=np.int64) for a in arrays]
    if window is not None:
        kept = [a[len(a) - min(len(a), window) :] for a in kept]
    lengths = np.array([len(a) for a in kept], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    grid = np.full((len(kept), width), -1, dtype=np.int64)
    if lengths.sum():
        starts = np.cumsum(lengths) - lengths
        within = np.arange(lengths.sum()) - np.repeat(starts, lengths)
        rows = np.repeat(np.arange(len(kept)), lengths)
        grid[rows, width - np.repeat(lengths, lengths) + within] = np.concatenate(kept)
    return torch.from_numpy(grid)


@dataclass
class HistoryBatch:
    """Model inputs of ``B`` users' histories.

    input_ids, attention_mask: LongTensor[B, T], LEFT-padded, ``<o_1> s_1 … <o_n> s_n`` over
        each user's last ``max_items`` interactions.
    seen: LongTensor[B, M] every history item index (not only the window), -1 left-padded:
        what ``exclude_seen`` leaves out.
    """

    input_ids: LongTensor
    attention_mask: LongTensor
    seen: LongTensor


def history_tensors(
    vocab,
    item_codes: LongTensor,
    pad_id: int,
    items: Sequence[np.ndarray],
    outcomes: Sequence[np.ndarray],
    *,
    max_items: int,
) -> HistoryBatch:
    """Item and outcome indices of each user (ragged, time order) → :class:`HistoryBatch`.

    item_codes: LongTensor[N, L] the catalogue's SIDs; outcomes index ``vocab.outcomes``.
    """
    window_items = _right_aligned(items, max_items)
    window_outcomes = _right_aligned(outcomes, max_items)
    input_ids, mask = history_inputs(vocab, item_codes, window_items, window_outcomes)
    seen = _right_aligned(items, None)
    return HistoryBatch(input_ids.where(mask.bool(), pad_id), mask, seen)


# --------------------------------------------------------------------------- results
@dataclass
class Retrieval:
    """What :meth:`Recommender.retrieve` computed for ``B`` users.

    beams: the beam search's candidates (``items``/``codes``/``scores``/``outcomes`` [B, K…],
        ``history_states`` [B, T, H] when ranked), or None when no beam search ran.
    ranked: the ranking head's order of the beam candidates, or None (no head, or not asked).
    dense_logits: FloatTensor[B, N] dense-head scores of the whole catalogue, or None.
    exclude: LongTensor[B, M] the item indices left out (-1 padded), or None.
    beam_seconds, rank_seconds: wall time of the beam search and of the ranking head.
    """

    beams: BeamSearchOutput | None
    ranked: RankedOutput | None
    dense_logits: FloatTensor | None
    exclude: LongTensor | None
    beam_seconds: float = 0.0
    rank_seconds: float = 0.0

    def dense_top(self, k: int, *, beam_weight: float = 0.0) -> tuple[FloatTensor, LongTensor]:
        """Top ``min(k, N)`` items of the dense head → (scores, item indices) [B, min(k, N)].

        ``beam_weight`` > 0 merges in the beam's log-probs (:func:`sid.dense.fused_scores`);
        excluded items score -inf.
        """
        from sid.dense import fused_scores

        if self.dense_logits is None:
            raise ValueError("no dense scores: the run has no dense head (train.py --dense)")
        beams = self.beams
        logp = fused_scores(
            self.dense_logits,
            None if beams is None else beams.items,
            None if beams is None else beams.scores,
            beam_weight=beam_weight,
            exclude=self.exclude,
        )
        top = logp.topk(min(k, logp.shape[1]), dim=-1)
        return top.values, top.indices


@dataclass
class Recommendations:
    """Top-k of ``B`` users, best first.

    items: per user the recommended catalogue item ids (shorter than k only when fewer
        items are left, e.g. a small catalogue minus the user's history).
    scores: FloatTensor[B, k] the method's score (beam: summed SID log-prob; beam+ranking:
        the ranked score; dense: log-softmax over the catalogue, + the weighted beam log-prob
        for dense+beam); -inf where no item.
    indices: LongTensor[B, k] item indices into ``Recommender.item_ids``; -1 where no item.
    method: the method that produced them.
    """

    items: list[list[str]]
    scores: FloatTensor
    indices: LongTensor
    method: str


def _pad_columns(scores: FloatTensor, indices: LongTensor, k: int):
    """Right-pad to k columns (-inf / -1) and mark -inf scores as missing items."""
    missing = k - indices.shape[1]
    if missing > 0:
        scores = F.pad(scores, (0, missing), value=float("-inf"))
        indices = F.pad(indices, (0, missing), value=-1)
    indices = indices.where(scores > float("-inf"), -1)
    return scores, indices


# --------------------------------------------------------------------------- the recommender
class Recommender:
    """A trained run, loaded once, that recommends catalogue items for histories.

    rec: the :class:`~sid.model.SIDRecModel` (LM + SIDs + optional PrefixMem / dense head).
    ranker: an optional :class:`~sid.ranking.RankingHead` trained on ``rec``.
    max_items: history window: the last ``max_items`` interactions are read (as in training).
    default_outcome: the outcome decoded under when none is asked for.
    """

    def __init__(
        self,
        rec: SIDRecModel,
        *,
        ranker=None,
        max_items: int,
        default_outcome: str | None = None,
        run_dir: str | os.PathLike | None = None,
        config: dict | None = None,
    ):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.rec = rec
        self.ranker = ranker
        self.max_items = int(max_items)
        self.default_outcome = default_outcome or rec.vocab.outcomes[0]
        rec.vocab.outcome_id(self.default_outcome)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.config = config or {}
        self.trie = rec.sids.trie.to(rec.device)
        self._item_index = {item: i for i, item in enumerate(rec.sids.item_ids)}
        self._outcome_index = {o: i for i, o in enumerate(rec.vocab.outcomes)}

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        rerank: bool = True,
    ) -> Recommender:
        """Load a run directory of train.py: model, SIDs, dense head, and (with ``rerank``) the
        ranking head under ``RUN/ranker``, refused when it was trained on another model."""
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        rec = SIDRecModel.from_pretrained(run_dir, device=device)
        ranker = None
        if rerank and (run_dir / "ranker" / "config.json").exists():
            from sid.ranking import RankingHead

            check_ranker_binding(run_dir, rec)
            ranker = RankingHead.from_pretrained(run_dir / "ranker")
            _check_ranker_fits(run_dir / "ranker", ranker, rec)
            ranker.to(rec.device).eval()
        outcome = _recorded_outcome(config, list(rec.vocab.outcomes))
        recommender = cls(
            rec,
            ranker=ranker,
            max_items=int(config["model"]["max_items"]),
            default_outcome=outcome,
            run_dir=run_dir,
            config=config,
        )
        logger.info(
            f"recommender: {run_dir} ({len(recommender.item_ids)} items, methods "
            f"{', '.join(recommender.methods)}) on {rec.device}"
        )
        return recommender

    # ------------------------------------------------------------------ what it holds
    @property
    def item_ids(self) -> list[str]:
        return self.rec.sids.item_ids

    @property
    def outcomes(self) -> list[str]:
        return list(self.rec.vocab.outcomes)

    @property
    def model_fingerprint(self) -> str | None:
        return self.rec.fingerprint

    @property
    def device(self) -> torch.device:
        return self.rec.device

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this run can serve (a ranking head and a dense head are optional)."""
        out = ["beam"]
        if self.ranker is not None:
            out.append("beam+ranking")
        if self.rec.dense is not None:
            out += ["dense", "dense+beam"]
        return tuple(out)

    @property
    def default_method(self) -> str:
        return "beam+ranking" if self.ranker is not None else "beam"

    # ------------------------------------------------------------------ inputs
    def encode(self, items: Sequence[np.ndarray], outcomes: Sequence[np.ndarray]) -> HistoryBatch:
        """Item and outcome indices per user (ragged, time order) → :class:`HistoryBatch`."""
        return history_tensors(
            self.rec.vocab,
            self.rec.sids.codes,
            self.rec.tokenizer.pad_token_id,
            items,
            outcomes,
            max_items=self.max_items,
        )

    def _indices(self, histories, outcomes, unknown_items: str):
        """Item ids / outcome labels per user → (item index arrays, outcome index arrays)."""
        if unknown_items not in ("error", "skip"):
            raise ValueError(f"unknown_items must be 'error' or 'skip', got {unknown_items!r}")
        if isinstance(histories, (str, bytes)) or not hasattr(histories, "__len__"):
            raise ValueError(
                "histories must be a list of item-id sequences, one per user "
                f"(got {type(histories).__name__})"
            )
        if outcomes is not None and len(outcomes) != len(histories):
            raise ValueError(
                f"outcomes holds {len(outcomes)} sequences for {len(histories)} histories"
            )
        default = self._outcome_index[self.default_outcome]
        all_items, all_outcomes = [], []
        for user, history in enumerate(histories):
            if isinstance(history, (str, bytes)):
                raise ValueError(
                    f"history of user {user} is the string {history!r}: pass a sequence of "
                    "item ids per user (wrap a single history in a list)"
                )
            labels = None if outcomes is None else outcomes[user]
            if labels is not None and len(labels) != len(history):
                raise ValueError(
                    f"user {user}: {len(labels)} outcome labels for {len(history)} items"
                )
            items, outs = [], []
            for pos, item in enumerate(history):
                index = self._item_index.get(str(item))
                if index is None:
                    if unknown_items == "skip":
                        continue
                    raise ValueError(
                        f"user {user}: item id {item!r} (position {pos}) is not in the "
                        f"catalogue of {len(self.item_ids)} items; pass unknown_items='skip' "
                        "to leave unknown items out"
                    )
                items.append(index)
                if labels is None:
                    outs.append(default)
                elif labels[pos] in self._outcome_index:
                    outs.append(self._outcome_index[labels[pos]])
                else:
                    raise ValueError(
                        f"user {user}: outcome {labels[pos]!r} (position {pos}) is not one of "
                        f"the run's outcomes {self.outcomes}"
                    )
            all_items.append(np.asarray(items, dtype=np.int64))
            all_outcomes.append(np.asarray(outs, dtype=np.int64))
        return all_items, all_outcomes

    def _check_outcome(self, outcome) -> None:
        labels = list(outcome) if isinstance(outcome, Mapping) else [outcome]
        for label in labels:
            if not isinstance(label, str) or label not in self._outcome_index:
                raise ValueError(
                    f"outcome {label!r} is not one of the run's outcomes {self.outcomes}"
                )

    # ------------------------------------------------------------------ serving
    @torch.inference_mode()
    def retrieve(
        self,
        input_ids: LongTensor,
        attention_mask: LongTensor,
        exclude: LongTensor | None = None,
        *,
        beam: BeamSearchConfig | None = None,
        beam_search: bool = True,
        rerank: bool = True,
        dense: bool = True,
        beam_weight: float = DEFAULT_BEAM_WEIGHT,
        outcome_weights: dict[str, float] | None = None,
    ) -> Retrieval:
        """One batch at the index level: beam search → (ranking head) and the dense head.

        Args:
            input_ids, attention_mask: LongTensor[B, T], LEFT-padded histories (e.g.
                :meth:`encode`); no outcome token at the end (``beam.outcome`` is appended).
            exclude: LongTensor[B, M] item indices never returned (-1 padded), or None.
            beam: the search's options; ``outcome=None`` means :attr:`default_outcome`. The
                history states are kept only when they are ranked.
            beam_search: False skips the beam search (dense head only).
            rerank: rank the beam's candidates with the head (when the run has one).
            dense: score the catalogue with the dense head (when the run has one); it reads
                one outcome label, so a budget ``beam.outcome`` needs ``dense=False``.
            beam_weight, outcome_weights: as :func:`sid.ranking.rank_candidates`.
        """
        beam = BeamSearchConfig() if beam is None else beam
        if beam.outcome is None:
            beam = replace(beam, outcome=self.default_outcome)
        self._check_outcome(beam.outcome)
        rank = rerank and beam_search and self.ranker is not None
        beam = replace(beam, return_states=rank)
        dense_feature = rank and self.ranker.config.score_features >= 2
        one_query = isinstance(beam.outcome, str) and resolve_slots(beam.slots, self.rec.vocab) == 1
        if dense_feature and not one_query:
            raise ValueError(
                "this run's ranking head reads the dense score of each candidate, which needs "
                f"one outcome label and one slot per user; got outcome {beam.outcome!r} and "
                f"{resolve_slots(beam.slots, self.rec.vocab)} slots (or pass rerank=False)"
            )
        if beam.prior_weight > 0 and self.rec.dense is None:
            raise ValueError(
                f"prior_weight={beam.prior_weight} weighs the dense head's scores inside the "
                "beam search, but this run has no dense head (train.py --dense)"
            )
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        exclude = None if exclude is None else exclude.to(device)
        beams, ranked, logits = None, None, None
        beam_seconds = rank_seconds = 0.0
        if beam_search:
            t0 = time.perf_counter()
            beams = beam.search(
                self.rec.lm,
                self.rec.vocab,
                self.trie,
                input_ids,
                attention_mask,
                exclude,
                prior=self.rec.dense if beam.prior_weight > 0 or dense_feature else None,
            )
            beam_seconds = time.perf_counter() - t0
        if dense and self.rec.dense is not None:
            from sid.dense import dense_logits

            if not isinstance(beam.outcome, str):
                raise ValueError(
                    f"the dense head scores under one outcome label, got the budget "
                    f"{beam.outcome}; pass one label or dense=False"
                )
            n_slots = resolve_slots(beam.slots, self.rec.vocab)
            logits = dense_logits(
                self.rec.lm,
                self.rec.dense,
                input_ids,
                attention_mask,
                self.rec.vocab.outcome_id(beam.outcome),
                slot_ids=[self.rec.vocab.slot_id(j) for j in range(2, n_slots + 1)],
            )
        if rank:
            from sid.ranking import rank_candidates

            t1 = time.perf_counter()
            ranked = rank_candidates(
                self.ranker,
                self.rec.lm,
                self.rec.vocab,
                self.rec.sids,
                beams.history_states,
                beams.history_mask,
                beams.items,
                beam_scores=beams.scores,
                outcome_weights=outcome_weights,
                beam_weight=beam_weight,
                prior_scores=beams.prior_scores,
            )
            rank_seconds = time.perf_counter() - t1
            ranked.retrieval = beams
        return Retrieval(beams, ranked, logits, exclude, beam_seconds, rank_seconds)

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        *,
        outcome: str | dict[str, int] | None = None,
        exclude_seen: bool = True,
        outcomes: Sequence[Sequence[str]] | None = None,
        method: str | None = None,
        num_beams: int | None = None,
        batch_size: int = BATCH_SIZE,
        beam_weight: float = DEFAULT_BEAM_WEIGHT,
        dense_beam_weight: float = DENSE_BEAM_WEIGHT,
        outcome_weights: dict[str, float] | None = None,
        unknown_items: str = "error",
        prior_weight: float = BeamSearchConfig.prior_weight,
    ) -> Recommendations:
        """Top-k catalogue items for each history.

        Args:
            histories: per user, the item ids of their interactions in time order (the
                catalogue's own id strings, :attr:`item_ids`); the last :attr:`max_items` are
                read. An empty history is a cold start.
            k: items per user.
            outcome: the outcome to recommend for (a label, or for the beam methods a budget
                ``{"like": 7, "watch": 3}``); default :attr:`default_outcome`.
            exclude_seen: never recommend an item of the user's history.
            outcomes: per user, the outcome label of each interaction (aligned with
                ``histories``); default: every interaction gets :attr:`default_outcome`.
            method: one of :attr:`methods`; default :attr:`default_method` (beam+ranking when
                the run has a ranking head, else beam).
            num_beams: beams per user (default ``BeamSearchConfig.num_beams``, at least k).
            batch_size: users per forward pass.
            beam_weight, outcome_weights: the ranking head's blend (beam+ranking).
            dense_beam_weight: share of the beam log-prob in dense+beam.
            unknown_items: "error" refuses an item id not in the catalogue, naming it and the
                user; "skip" leaves such items out of the history.
            prior_weight: the beam methods: weight of the dense head's item log-probs inside
                the search (:class:`~sid.retrieval.BeamSearchConfig`; needs a dense head).

        Returns:
            :class:`Recommendations` (item ids, scores [B, k], indices [B, k]).
        """
        method = self.default_method if method is None else method
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method not in self.methods:
            why = "a ranking head (train.py --ranker, loaded with rerank=True)"
            if method.startswith("dense"):
                why = "a dense head (train.py --dense)"
            raise ValueError(
                f"method {method!r} needs {why}; this run serves {', '.join(self.methods)}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        outcome = self.default_outcome if outcome is None else outcome
        self._check_outcome(outcome)
        if method.startswith("dense") and not isinstance(outcome, str):
            raise ValueError(f"method {method!r} takes one outcome label, got {outcome!r}")
        if num_beams is None:
            num_beams = max(k, BeamSearchConfig.num_beams)
        budget = isinstance(outcome, Mapping)
        top_k = k if method == "beam" and not budget else None
        beam = BeamSearchConfig(
            num_beams=num_beams, top_k=top_k, outcome=outcome, prior_weight=prior_weight
        )
        if method in ("beam", "beam+ranking") and beam.num_candidates < k:
            raise ValueError(
                f"k={k} needs at least k beam candidates, the search yields "
                f"{beam.num_candidates} (num_beams={num_beams}, outcome={outcome!r})"
            )
        items, outs = self._indices(histories, outcomes, unknown_items)
        all_scores, all_indices = [], []
        for lo in range(0, len(items), batch_size):
            batch = self.encode(items[lo : lo + batch_size], outs[lo : lo + batch_size])
            found = self.retrieve(
                batch.input_ids,
                batch.attention_mask,
                batch.seen if exclude_seen else None,
                beam=beam,
                beam_search=method != "dense",
                rerank=method == "beam+ranking",
                dense=method.startswith("dense"),
                beam_weight=beam_weight,
                outcome_weights=outcome_weights,
            )
            if method == "beam":
                scores, indices = found.beams.scores[:, :k], found.beams.items[:, :k]
            elif method == "beam+ranking":
                scores, indices = found.ranked.final_scores[:, :k], found.ranked.items[:, :k]
            else:
                weight = dense_beam_weight if method == "dense+beam" else 0.0
                scores, indices = found.dense_top(k, beam_weight=weight)
            scores, indices = _pad_columns(scores.float().cpu(), indices.cpu(), k)
            all_scores.append(scores)
            all_indices.append(indices)
        scores = torch.cat(all_scores) if all_scores else torch.zeros(0, k)
        indices = torch.cat(all_indices) if all_indices else torch.zeros(0, k, dtype=torch.long)
        ids = self.item_ids
        names = [[ids[i] for i in row if i >= 0] for row in indices.tolist()]
        return Recommendations(items=names, scores=scores, indices=indices, method=method)


def _recorded_outcome(config: dict, labels: list[str]) -> str:
    """The outcome a run serves by default: the one it records (`"serving" → "outcome"`), else
    the most frequent outcome of its data summary, else the first label."""
    recorded = (config.get("serving") or {}).get("outcome")
    if recorded in labels:
        return recorded
    shares = (config.get("summary") or {}).get("outcomes") or {}
    known = [(float(shares[o]), -i, o) for i, o in enumerate(labels) if o in shares]
    return max(known)[2] if known else labels[0]


__all__ = [
    "METHODS",
    "HistoryBatch",
    "Recommendations",
    "Recommender",
    "Retrieval",
    "check_ranker_binding",
    "history_tensors",
    "read_run_config",
]
