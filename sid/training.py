"""Training data for the LM as token ids, its collator, and the HF `Trainer` set-up.

A user's history is written straight as token ids, `<o_1> s_1 … <o_n> s_n` (outcome token,
then the item's L SID tokens), so the model learns P(item | history, outcome) and the outcome
can be chosen at serving time. Histories longer than `max_items` become sliding windows; a
window's leading items that an earlier window already used as targets are context only, so
every train item is a target exactly once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from sid.codes import SemanticIDs
from sid.data import LeaveOneOutSplit
from sid.vocab import SIDVocab

IGNORE = -100


def _token_matrix(
    items: np.ndarray, outcomes: np.ndarray, sids: SemanticIDs, vocab: SIDVocab
) -> np.ndarray:
    """items [n], outcomes [n] → int64 [n, 1 + L]: the outcome token, then the SID tokens."""
    return vocab.item_token_ids(sids.codes[torch.as_tensor(items)], outcomes).numpy()


def _check_outcomes(split: LeaveOneOutSplit, vocab: SIDVocab) -> None:
    missing = [o for o in split.data.outcome_labels if o not in vocab.outcomes]
    if missing:
        raise ValueError(
            f"outcome label(s) {missing} of dataset {split.data.name!r} are not in the model's "
            f"vocabulary {vocab.outcomes}; build the vocabulary with every outcome of the data"
        )


def future_windows(
    split: LeaveOneOutSplit,
    target_window: int,
    seconds: float | None = None,
    *,
    same_outcome: bool = True,
) -> np.ndarray:
    """The targets of every train position under a future window of `target_window` items:
    int64 [N', W], row i = train item i, then the next W - 1 train items of the same user that
    share its outcome (-1 where the user's train sequence ends or the outcome differs) and,
    with `seconds`, that come at most that many seconds after item i.

    Column 0 is the item itself, so W = 1 is the next-item target. The window never reaches
    past the train sequence: validation and test items are no one's target. Only items of the
    same outcome count, because the model reads the outcome token before it writes the SID:
    under `<like>` the targets are the items the user goes on to like. `same_outcome=False`
    (an unconditioned model, which reads no outcome) takes the next items whatever their outcome.
    """
    if target_window < 1:
        raise ValueError(f"--target_window must be >= 1 (1 = next item), got {target_window}")
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"--target_window_seconds must be >= 0, got {seconds}")
    if seconds is not None and split.train_timestamps is None:
        raise ValueError("--target_window_seconds needs the split's train timestamps")
    n = split.train_items.shape[0]
    ends = np.repeat(split.train_offsets[1:], np.diff(split.train_offsets))  # [N'] user's end
    here = np.arange(n)
    out = np.full((n, target_window), -1, dtype=np.int64)
    for k in range(target_window):
        at = here + k
        inside = at < ends
        at = np.where(inside, at, 0)
        same = (
            (inside & (split.train_outcomes[at] == split.train_outcomes))
            if same_outcome
            else inside
        )
        if seconds is not None:
            same &= split.train_timestamps[at] - split.train_timestamps <= seconds
        out[:, k] = np.where(same, split.train_items[at], -1)
    return out


def build_train_windows(
    split: LeaveOneOutSplit,
    sids: SemanticIDs,
    vocab: SIDVocab,
    *,
    max_items: int = 50,
    stride: int | None = None,
    outcome_loss: bool = False,
    target_window: int = 1,
    target_window_seconds: float | None = None,
) -> dict[str, list]:
    """Sliding windows over each kept user's train sequence (valid/test targets never enter).

    Returns columns `input_ids`, `labels` (lists of int lists, `labels` = -100 where there is
    no loss) and `user` (position of the user in `split.users`). With `target_window` W > 1
    also `window`: per example, the [items, W] future-window targets of its items
    (`future_windows`, within `target_window_seconds` of the item when given), flattened; `window_lm_loss` and the dense head then reward any of them.
    """
    if max_items < 2:
        raise ValueError(
            f"max_items={max_items} is too small: a window needs at least one history item "
            "and one target item (use max_items >= 2)"
        )
    stride = stride or max(1, max_items // 2)
    if not 1 <= stride <= max_items:
        raise ValueError(f"stride must be in [1, max_items={max_items}], got {stride}")
    _check_outcomes(split, vocab)
    tokens = _token_matrix(split.train_items, split.train_outcomes, sids, vocab)  # [N, 1+L]
    labels = tokens.copy()
    if not outcome_loss:
        labels[:, 0] = IGNORE
    columns: dict[str, list] = {"input_ids": [], "labels": [], "user": []}
    window = (
        future_windows(split, target_window, target_window_seconds, same_outcome=vocab.conditioned)
        if target_window > 1
        else None
    )
    if window is not None:
        columns["window"] = []
    offsets = split.train_offsets
    for user in range(split.num_users):
        lo, hi = int(offsets[user]), int(offsets[user + 1])
        n = hi - lo
        if n < 2:
            continue  # a single item has no history to predict it from
        start, covered = 0, 0  # `covered`: items already used as targets
        while True:
            end = min(start + max_items, n)
            window_labels = labels[lo + start : lo + end].copy()
            # the first item has no history; items an earlier window covered are context only
            window_labels[: max(1, covered - start)] = IGNORE
            columns["input_ids"].append(tokens[lo + start : lo + end].reshape(-1).tolist())
            columns["labels"].append(window_labels.reshape(-1).tolist())
            columns["user"].append(user)
            if window is not None:
                columns["window"].append(window[lo + start : lo + end].reshape(-1).tolist())
            covered = end
            if end == n:
                break
            start += stride
    if not columns["input_ids"]:
        raise ValueError("no training windows: every user has fewer than 2 train items")
    return columns


def build_eval_examples(
    split: LeaveOneOutSplit,
    sids: SemanticIDs,
    vocab: SIDVocab,
    *,
    max_items: int = 50,
    which: str = "valid",
) -> dict[str, list]:
    """One example per kept user: the last `max_items - 1` history items + the target.

    Only the target's SID tokens carry labels, so the eval loss and accuracy are next-item.
    """
    _check_outcomes(split, vocab)
    targets, target_outcomes = split.targets(which)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "user": []}
    for user in range(split.num_users):
        hist_items, hist_outcomes = split.history(user, which)
        hist_items, hist_outcomes = (
            hist_items[-(max_items - 1) :],
            hist_outcomes[-(max_items - 1) :],
        )
        items = np.append(hist_items, targets[user])
        outcomes = np.append(hist_outcomes, target_outcomes[user])
        tokens = _token_matrix(items, outcomes, sids, vocab)
        labels = np.full_like(tokens, IGNORE)
        labels[-1, 1:] = tokens[-1, 1:]
        columns["input_ids"].append(tokens.reshape(-1).tolist())
        columns["labels"].append(labels.reshape(-1).tolist())
        columns["user"].append(user)
    return columns


@dataclass
class SIDCollator:
    """Right-pads `input_ids`/`labels` to the longest example of the batch.

    Examples with a `window` column (future-window training) also give `window_items`
    LongTensor [B, n, W] (each item's window targets, -1 padded) and `window_tokens`
    [B, n, W, L] (their SID tokens from `item_tokens` [N, L], -100 where there is no target),
    n the most items of an example in the batch.

    Train examples marked `slot_train` of a model with `slots` k > 1 also get slot segments
    (`slot_segments`): per slot j = 2..k, up to `slot_anchors` sampled items i of the example
    whose item i + j - 1 is a target, each written after the padded examples as
    `<o> <next_j> s_1 … s_L` (the outcome and SID of item i + j - 1) and seeing only the
    history before item i. The batch then also has `position_ids`, `segment` [B, T] (0: the
    example, s >= 1: its s-th segment, -1: padding) and `visible` [B, T] (how many of the
    example's positions a segment token sees), from which `slot_attention_mask` builds the
    4D mask. A fresh draw of anchors every batch: over the epochs every item serves.
    """

    pad_token_id: int
    item_tokens: torch.Tensor | None = None
    slots: int = 1
    slot_ids: tuple[int, ...] = ()
    slot_anchors: int = 8
    num_levels: int = 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE, dtype=torch.long)
        attention = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            attention[row, :n] = 1
        out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if features[0].get("window") is not None:
            if self.item_tokens is None:
                raise ValueError("window examples need the collator's item_tokens [N, L]")
            per_item = 1 + self.item_tokens.shape[1]
            width = len(features[0]["window"]) * per_item // len(features[0]["input_ids"])
            items = torch.full((batch, longest // per_item, width), -1, dtype=torch.long)
            for row, f in enumerate(features):
                w = torch.as_tensor(f["window"], dtype=torch.long).view(-1, width)
                items[row, : w.shape[0]] = w
            tokens = self.item_tokens[items.clamp_min(0)]
            out["window_items"] = items
            out["window_tokens"] = tokens.masked_fill((items < 0)[..., None], IGNORE)
        if self.slots > 1 and features[0].get("slot_train"):
            out.update(self.slot_segments(input_ids, labels, attention))
        return out

    def slot_segments(
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention: torch.Tensor
    ) -> dict:
        """The batch with slot segments appended after column `longest` (see the class)."""
        if len(self.slot_ids) != self.slots - 1 or self.num_levels < 1:
            raise ValueError("slot training needs the collator's slot_ids and num_levels")
        B, M = input_ids.shape
        L = self.num_levels
        S = 1 + L
        seg_ids, seg_labels, seg_pos, seg_vis = [], [], [], []
        for row in range(B):
            n_items = int(attention[row].sum()) // S
            target = labels[row, : n_items * S].view(n_items, S)[:, 1] != IGNORE  # [n_items]
            ids, lab, pos, vis = [], [], [], []
            for j in range(2, self.slots + 1):
                d = j - 1
                anchors = torch.arange(1, max(1, n_items - d))
                anchors = anchors[target[anchors + d]] if anchors.numel() else anchors
                if anchors.numel() > self.slot_anchors:
                    anchors = anchors[torch.randperm(anchors.numel())[: self.slot_anchors]]
                for i in anchors.tolist():
                    item = input_ids[row, (i + d) * S : (i + d + 1) * S]  # <o> s_1 … s_L
                    ids += [int(item[0]), self.slot_ids[j - 2], *item[1:].tolist()]
                    lab += [IGNORE, IGNORE, *item[1:].tolist()]
                    pos += [i * S, i * S, *range(i * S + 1, i * S + 1 + L)]
                    vis += [i * S] * (L + 2)
            seg_ids.append(ids)
            seg_labels.append(lab)
            seg_pos.append(pos)
            seg_vis.append(vis)
        extra = max(len(x) for x in seg_ids)
        T = M + extra
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        lab = torch.full((B, T), IGNORE, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        segment = torch.full((B, T), -1, dtype=torch.long)
        visible = torch.full((B, T), T, dtype=torch.long)
        ids[:, :M], lab[:, :M] = input_ids, labels
        pos[:, :M] = torch.arange(M)
        segment[:, :M] = torch.where(attention.bool(), 0, -1)
        for row in range(B):
            k = len(seg_ids[row])
            if not k:
                continue
            ids[row, M : M + k] = torch.tensor(seg_ids[row])
            lab[row, M : M + k] = torch.tensor(seg_labels[row])
            pos[row, M : M + k] = torch.tensor(seg_pos[row])
            segment[row, M : M + k] = 1 + torch.arange(k) // (L + 2)
            visible[row, M : M + k] = torch.tensor(seg_vis[row])
        attention = (segment >= 0).long()
        return {
            "input_ids": ids,
            "labels": lab,
            "attention_mask": attention,
            "position_ids": pos,
            "segment": segment,
            "visible": visible,
        }


def check_slot_attention(impl: str) -> None:
    """Slot segments (training) and slot decoding need custom 4D masks: eager or SDPA."""
    if impl not in ("eager", "sdpa"):
        raise ValueError(
            f"--slots > 1 needs the eager or sdpa attention implementation (custom 4D masks); "
            f"the model uses {impl!r}"
        )


def slot_attention_mask(segment: torch.Tensor, visible: torch.Tensor, *, additive_dtype=None):
    """The 4D attention mask [B, 1, T, T] of a batch with slot segments (`SIDCollator`): the
    example's own tokens attend causally among themselves, a segment's tokens to the example's
    first `visible` positions and causally inside their segment, padding to itself only.
    Boolean (True: attend), or additive in `additive_dtype` (0 / the dtype's minimum) for
    attention implementations that add the mask to the scores."""
    T = segment.shape[1]
    at = torch.arange(T, device=segment.device)
    causal = at[None, :, None] >= at[None, None, :]
    key_seg = segment[:, None, :]
    same = segment[:, :, None] == key_seg
    history = (key_seg == 0) & (at[None, None, :] < visible[:, :, None])
    allowed = causal & (key_seg >= 0) & (same | history)
    allowed |= torch.eye(T, dtype=torch.bool, device=segment.device)[None]
    allowed = allowed[:, None]
    if additive_dtype is None:
        return allowed
    bias = torch.zeros(allowed.shape, dtype=additive_dtype, device=segment.device)
    return bias.masked_fill(~allowed, torch.finfo(additive_dtype).min)


def window_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    window_tokens: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The LM loss under future-window targets; logits [B, T, V], labels [B, T], window_tokens
    [B, n, W, L] (`SIDCollator`; examples laid out `<o_1> s_1 … <o_n> s_n` from position 0).

    At the position that writes level l of item j, every window target of item j whose first
    l codes equal item j's (the prefix the model was fed) is a right answer: the loss is the
    mean of their negative log-likelihoods, the cross-entropy against the window's empirical
    distribution of level-l codes given that prefix. Summed over the levels this is the
    log-likelihood of a uniform mixture over the window's SIDs, factorised along the trie; with
    W = 1 it is the next-token cross-entropy. Other labelled positions (outcome tokens, under
    `--outcome_loss`) keep the plain cross-entropy. Mean over labelled positions.
    `label_smoothing` ε mixes in the uniform distribution over the vocabulary, as
    `F.cross_entropy(label_smoothing=ε)` does for one target.
    """
    B, n, W, L = window_tokens.shape
    S = 1 + L
    V = logits.shape[-1]
    # position j*S + l reads item j's outcome token (l = 0) or its SID prefix, and writes level l
    level_logits = logits[:, : n * S].reshape(B, n, S, V)[:, :, :L].float()  # [B, n, L, V]
    sid_labels = labels[:, : n * S].reshape(B, n, S)[:, :, 1:]  # [B, n, L]
    labelled = sid_labels != IGNORE
    valid = window_tokens != IGNORE  # [B, n, W, L]
    same = (window_tokens == window_tokens[:, :, :1]).int()  # agrees with item j, per level
    prefix = F.pad(same.cumprod(-1), (1, 0), value=1)[..., :L].bool()  # levels < l agree
    accepted = (valid & prefix).transpose(2, 3)  # [B, n, L, W]
    picked = level_logits.gather(-1, window_tokens.clamp_min(0).transpose(2, 3))  # [B, n, L, W]
    lse = level_logits.logsumexp(-1, keepdim=True)
    per_position = ((lse - picked) * accepted).sum(-1) / accepted.sum(-1).clamp_min(1)
    if label_smoothing:  # [B, n, L]
        uniform = lse[..., 0] - level_logits.mean(-1)
        per_position = (1 - label_smoothing) * per_position + label_smoothing * uniform
    total, count = per_position[labelled].sum(), labelled.sum()
    at = torch.arange(labels.shape[1], device=labels.device)
    sid_position = (at < n * S) & (at % S != 0)  # the SID labels, counted above
    other = labels.masked_fill(sid_position[None, :], IGNORE)
    if bool((other[:, 1:] != IGNORE).any()):
        total = total + F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            other[:, 1:].flatten(),
            ignore_index=IGNORE,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        count = count + (other[:, 1:] != IGNORE).sum()
    return total / count.clamp_min(1)


def argmax_predictions(logits, labels):
    """Keep only the arg-max token per position, so eval does not hold [N, T, V] logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def next_sid_accuracy(eval_pred) -> dict[str, float]:
    """Token accuracy on labelled SID positions and exact-match rate of whole target SIDs."""
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    predictions, labels = np.asarray(predictions)[:, :-1], np.asarray(labels)[:, 1:]
    mask = labels != IGNORE
    correct = (predictions == labels) & mask
    token_acc = correct.sum() / max(1, mask.sum())
    rows = mask.any(axis=1)
    exact = ((correct | ~mask).all(axis=1) & rows).sum() / max(1, rows.sum())
    return {"next_sid_token_accuracy": float(token_acc), "next_sid_exact": float(exact)}


def tokens_per_epoch(columns: dict[str, list]) -> int:
    return int(sum(len(x) for x in columns["input_ids"]))


@dataclass
class SIDTrainingArguments(TrainingArguments):
    """Hugging Face `TrainingArguments` with this toolkit's defaults.

    Every option of the `Trainer` (gradient checkpointing, FSDP, DeepSpeed, `report_to`,
    bf16, optimisers, schedulers …) is reachable under its own name; only the defaults
    below differ from Hugging Face's, and a few have short aliases (`--epochs`, `--lr`,
    `--batch_size`, `--grad_accum`, `--warmup`). `bf16` left unset means "bf16 where the
    GPU supports it"; `per_device_eval_batch_size` left unset follows the training batch.
    """

    _argument_group_name = "training (Hugging Face TrainingArguments)"

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Checkpoints; train.py sets RUN_DIR/checkpoints (pass --run_dir)."},
    )
    num_train_epochs: float = field(
        default=1.0, metadata={"aliases": ["--epochs"], "help": "Training epochs."}
    )
    per_device_train_batch_size: int = field(
        default=32, metadata={"aliases": ["--batch_size"], "help": "Windows per device."}
    )
    per_device_eval_batch_size: int | None = field(
        default=None, metadata={"help": "Validation batch (unset: the training batch)."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"aliases": ["--grad_accum"], "help": "Accumulation steps."}
    )
    learning_rate: float = field(
        default=2e-3, metadata={"aliases": ["--lr"], "help": "Peak learning rate."}
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "LR schedule."}
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={"aliases": ["--warmup"], "help": "Warm-up: a share of the steps if < 1."},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "Validation: steps | no."}
    )
    eval_steps: float | None = field(default=200, metadata={"help": "Validate every N steps."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    use_cpu: bool | None = field(
        default=None,
        metadata={
            "help": "Train on CPU (unset: on CPU when several processes are launched on a "
            "machine without an accelerator, so that they join one gloo group)."
        },
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (unset: where the GPU has it)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for every stage of train.py."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the collator's columns (leave False)."}
    )
    disable_tqdm: bool | None = field(default=False, metadata={"help": "No progress bar."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin memory."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP: look for parameters without gradients."}
    )

    def __post_init__(self):
        if self.use_cpu is None:
            # several processes on a CPU-only machine: accelerate joins them (gloo) only when
            # told to use the CPU; a single process is left as Hugging Face would have it
            world = int(os.environ.get("WORLD_SIZE", "1"))
            self.use_cpu = world > 1 and not torch.accelerator.is_available()
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.data_seed is None:
            self.data_seed = self.seed
        # Hugging Face fills an unset output_dir in: remember whether the user chose one
        self.output_dir_given = self.output_dir is not None
        super().__post_init__()


def training_arguments(output_dir: str | os.PathLike, **options):
    """`SIDTrainingArguments(output_dir=..., **options)`: the toolkit's defaults, any option of
    Hugging Face's `TrainingArguments` by name (or by its short alias, e.g. `lr`)."""
    return SIDTrainingArguments(
        output_dir=str(output_dir), **resolve_aliases(SIDTrainingArguments, options)
    )


def resolve_aliases(cls, options: dict) -> dict:
    """Map short aliases (`lr`, `epochs`, …) of `cls`'s fields to the fields' names."""
    alias_of = {
        alias.lstrip("-"): f.name for f in fields(cls) for alias in f.metadata.get("aliases", [])
    }
    out: dict = {}
    for key, value in options.items():
        name = alias_of.get(key, key)
        if name in out:
            raise ValueError(f"option {name!r} given twice (as {key!r} too)")
        out[name] = value
    return out


def joint_dense_loss(
    model,
    inputs: dict,
    *,
    dense_weight: float = 1.0,
    dense_negatives: int = 0,
    label_smoothing: float = 0.0,
):
    """The training loss of one batch: the LM's loss over the SID (and outcome) tokens, plus
    `dense_weight` × the dense head's item loss when a `sid.dense.DenseRetrieval` is attached
    (full softmax, or a sampled softmax over `dense_negatives` uniform negatives, see
    `sid.dense.dense_loss`).

    With future-window targets in the batch (`window_tokens`/`window_items` from
    `SIDCollator`) the LM loss is `window_lm_loss` and the dense loss a multi-positive softmax
    over each position's window; otherwise both are next-item cross-entropies
    (`label_smoothing`: the Trainer's `label_smoothing_factor`, on the LM loss). One forward
    gives the states of both heads. `model` may be wrapped by the engine (DDP, FSDP …): the
    forward goes through the wrapper, so that its gradient synchronisation sees it. Returns
    (loss, CausalLMOutputWithPast with the LM loss and logits [B, T, V]).
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from sid.dense import DenseRetrieval, dense_loss

    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "get_input_embeddings"):
        inner = inner.module  # DistributedDataParallel & co. keep the LM as `.module`
    wrapper = DenseRetrieval.attached(inner)
    labels = inputs["labels"]
    mask, extra = inputs.get("attention_mask"), {}
    if inputs.get("segment") is not None:  # slot segments: a 4D mask and explicit positions
        impl = getattr(inner.config, "_attn_implementation", None) or "eager"
        check_slot_attention(impl)
        mask = slot_attention_mask(
            inputs["segment"],
            inputs["visible"],
            additive_dtype=None if impl == "sdpa" else inner.dtype,
        )
        extra["position_ids"] = inputs["position_ids"]
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=mask,
        output_hidden_states=wrapper is not None,
        use_cache=False,
        **extra,
    )
    logits = out.logits
    if inputs.get("window_tokens") is not None:
        lm = window_lm_loss(
            logits, labels, inputs["window_tokens"], label_smoothing=label_smoothing
        )
    else:
        lm = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels[:, 1:].flatten(),
            ignore_index=IGNORE,
            label_smoothing=label_smoothing,
        )
    loss = lm
    if wrapper is not None:
        hidden = out.hidden_states[-1]  # the final (normed) states
        loss = lm + dense_weight * dense_loss(
            wrapper,
            hidden,
            inputs["input_ids"],
            labels,
            num_negatives=dense_negatives,
            window_items=inputs.get("window_items"),
        )
    return loss, CausalLMOutputWithPast(loss=lm, logits=logits)


def _sid_trainer_class():
    from transformers import Trainer

    class SIDTrainer(Trainer):
        """`Trainer` whose loss is `joint_dense_loss`: future-window targets and the dense
        retrieval head's item loss beside the LM loss."""

        dense_weight = 1.0
        dense_negatives = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = joint_dense_loss(
                model,
                inputs,
                dense_weight=self.dense_weight,
                dense_negatives=self.dense_negatives,
                label_smoothing=self.args.label_smoothing_factor,  # as Trainer's smoother
            )
            return (loss, outputs) if return_outputs else loss

    return SIDTrainer


def make_trainer(
    lm,
    train_columns: dict,
    eval_columns: dict | None,
    args,
    pad_token_id: int,
    *,
    dense_weight: float = 1.0,
    dense_negatives: int = 0,
    item_tokens: torch.Tensor | None = None,
    vocab: SIDVocab | None = None,
    slot_anchors: int = 8,
):
    """An HF `Trainer` over our token-id datasets (accelerate handles devices and processes).

    When `lm` has a `sid.dense.DenseRetrieval` attached, the loss is the LM loss plus
    `dense_weight` × the dense head's loss (`joint_dense_loss`): full softmax, or sampled over
    `dense_negatives` uniform negatives when that is > 0. Train columns with a `window`
    (`build_train_windows(target_window=W)`) train on future-window targets; `item_tokens`
    [N, L] (every item's SID tokens) lets the collator turn them into tokens. A `vocab` with
    `slots` k > 1 trains the slot tokens too: per batch and slot, `slot_anchors` sampled items
    of each example get a slot segment (`SIDCollator.slot_segments`), slot j trained on the
    item j - 1 places after the next one, under that item's outcome.
    """
    from datasets import Dataset
    from transformers import Trainer

    from sid.dense import DenseRetrieval

    windowed = "window" in train_columns
    if windowed and item_tokens is None:
        raise ValueError("future-window training (a `window` column) needs item_tokens [N, L]")
    slots = 1 if vocab is None else vocab.slots
    if slots > 1:
        check_slot_attention(getattr(lm.config, "_attn_implementation", None) or "eager")
        if slot_anchors < 1:
            raise ValueError(f"slot_anchors must be >= 1, got {slot_anchors}")
    trainer_cls = Trainer
    if DenseRetrieval.attached(lm) is not None or windowed or slots > 1:
        trainer_cls = _sid_trainer_class()
        trainer_cls.dense_weight = float(dense_weight)
        trainer_cls.dense_negatives = int(dense_negatives)

    keep = ("input_ids", "labels", "window") if windowed else ("input_ids", "labels")
    train = {k: train_columns[k] for k in keep}
    if slots > 1:
        train["slot_train"] = [True] * len(train["input_ids"])
    train = Dataset.from_dict(train)
    evaluation = (
        Dataset.from_dict({k: eval_columns[k] for k in ("input_ids", "labels")})
        if eval_columns
        else None
    )
    trainer = trainer_cls(
        model=lm,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=SIDCollator(
            pad_token_id,
            item_tokens,
            slots=slots,
            slot_ids=tuple(vocab.slot_ids) if slots > 1 else (),
            slot_anchors=slot_anchors,
            num_levels=vocab.num_levels if vocab is not None else 0,
        ),
        compute_metrics=next_sid_accuracy if evaluation is not None else None,
        preprocess_logits_for_metrics=argmax_predictions,
    )
    from transformers.trainer_callback import ProgressCallback

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_single_bar_progress())
    return trainer


def _single_bar_progress():
    """Trainer's progress display with one bar: validation inside training gets no nested bar
    (in a saved log a nested bar leaves cursor-up debris), its metrics still print as a line."""
    from transformers.trainer_callback import ProgressCallback

    class SingleBarProgress(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if self.training_bar is None:  # a validation on its own keeps its bar
                super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)

    return SingleBarProgress()


def steps_for(n_examples: int, *, batch_size: int, grad_accum: int, epochs: float) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum * epochs)
