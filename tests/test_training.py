import json

import numpy as np
import pytest
import torch

from sid.codes import SemanticIDs
from sid.data import InteractionData, leave_one_out
from sid.model import SIDRecModel, history_token_ids, load_base_model
from sid.training import (
    IGNORE,
    build_eval_examples,
    build_train_windows,
    make_trainer,
    training_arguments,
)

N_ITEMS = 12
SIZES = [4, 4, 3]


def synthetic_sids(n_items=N_ITEMS, seed=0) -> SemanticIDs:
    g = torch.Generator().manual_seed(seed)
    space = torch.cartesian_prod(*[torch.arange(k) for k in SIZES])
    codes = space[torch.randperm(len(space), generator=g)[:n_items]]
    return SemanticIDs.from_codes(codes, [f"i{i}" for i in range(n_items)], codebook_sizes=SIZES)


def cyclic_data(n_users=24, length=14, n_items=N_ITEMS, seed=0) -> InteractionData:
    """Each user walks the catalogue in a fixed cycle from a random start: a learnable pattern."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, size=n_users)
    items = ((starts[:, None] + np.arange(length)[None, :]) % n_items).reshape(-1)
    outcomes = (items % 2).astype(np.int64)  # even items "like", odd "watch"
    return InteractionData(
        name="cyclic",
        item_ids=[f"i{i}" for i in range(n_items)],
        item_texts=[f"item {i}" for i in range(n_items)],
        user_ids=[f"u{u}" for u in range(n_users)],
        outcome_labels=["like", "watch"],
        offsets=np.arange(0, n_users * length + 1, length, dtype=np.int64),
        items=items.astype(np.int64),
        outcomes=outcomes,
        timestamps=np.tile(np.arange(length), n_users).astype(np.int64),
    )


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    sids = synthetic_sids()
    rec = SIDRecModel.build("tiny", sids, ["like", "watch"], hidden_size=64, intermediate_size=128)
    split = leave_one_out(cyclic_data())
    return rec, split


def test_history_tokens_round_trip_to_level_and_code(setup):
    rec, split = setup
    items, outcomes = split.train_sequence(0)
    ids = history_token_ids(items, outcomes, rec.sids, rec.vocab)
    L = rec.vocab.num_levels
    per_item = ids.view(len(items), 1 + L)
    levels, codes = rec.vocab.token_levels_codes(per_item)
    assert (levels[:, 0] == -1).all()  # the outcome token is not a SID token
    assert levels[:, 1:].tolist() == [list(range(L))] * len(items)
    assert codes[:, 1:].tolist() == rec.sids.codes[torch.as_tensor(items)].tolist()
    labels = [rec.vocab.outcomes[o] for o in outcomes]
    assert per_item[:, 0].tolist() == [rec.vocab.outcome_id(x) for x in labels]
    text = rec.tokenizer.convert_ids_to_tokens(per_item[0].tolist())
    assert text[1:] == [f"<{chr(97 + lv)}_{c}>" for lv, c in enumerate(codes[0, 1:].tolist())]


def test_no_valid_or_test_target_enters_a_training_window(setup):
    rec, split = setup
    windows = build_train_windows(split, rec.sids, rec.vocab, max_items=5, stride=2)
    L1 = 1 + rec.vocab.num_levels
    for ids, user in zip(windows["input_ids"], windows["user"], strict=True):
        seen = torch.tensor(ids).view(-1, L1)[:, 1:]
        for target in (split.valid_items[user], split.test_items[user]):
            gold = rec.vocab.sid_token_ids(rec.sids.codes[target])
            train_items = set(split.train_sequence(user)[0].tolist())
            if target not in train_items:  # cyclic users may revisit an item
                assert not (seen == gold).all(dim=1).any()
        assert len(ids) <= 5 * L1


def test_every_train_item_is_a_target_exactly_once(setup):
    rec, split = setup
    windows = build_train_windows(split, rec.sids, rec.vocab, max_items=5, stride=2)
    L = rec.vocab.num_levels
    targets_per_user = {}
    for labels, user in zip(windows["labels"], windows["user"], strict=True):
        lab = torch.tensor(labels).view(-1, 1 + L)
        targets_per_user[user] = targets_per_user.get(user, 0) + int((lab[:, 1] != IGNORE).sum())
        assert (lab[:, 0] == IGNORE).all()  # no loss on outcome tokens by default
    for user in range(split.num_users):
        n = len(split.train_sequence(user)[0])
        assert targets_per_user[user] == n - 1  # every item but the first (no history)


def test_eval_examples_label_only_the_target(setup):
    rec, split = setup
    ex = build_eval_examples(split, rec.sids, rec.vocab, max_items=4, which="valid")
    lab = torch.tensor(ex["labels"][0]).view(-1, 1 + rec.vocab.num_levels)
    assert (lab[:-1] == IGNORE).all() and (lab[-1, 0] == IGNORE)
    gold = rec.vocab.sid_token_ids(rec.sids.codes[split.valid_items[0]])
    assert lab[-1, 1:].tolist() == gold.tolist()


def _train(rec, split, out_dir, *, max_steps, save_steps=1000, lr=1e-2, eval_data=True):
    train = build_train_windows(split, rec.sids, rec.vocab, max_items=8)
    valid = build_eval_examples(split, rec.sids, rec.vocab, max_items=8) if eval_data else None
    args = training_arguments(
        out_dir,
        max_steps=max_steps,
        per_device_train_batch_size=16,
        learning_rate=lr,
        warmup_steps=0.0,
        weight_decay=0.0,
        save_steps=save_steps,
        eval_steps=1000,
        eval_strategy="steps" if eval_data else "no",
        logging_steps=10,
        bf16=False,
    )
    trainer = make_trainer(rec.lm, train, valid, args, rec.tokenizer.pad_token_id)
    trainer.args.disable_tqdm = True
    return trainer


def test_loss_falls_until_next_sid_accuracy_exceeds_0_9(tmp_path):
    torch.manual_seed(0)
    rec = SIDRecModel.build(
        "tiny", synthetic_sids(), ["like", "watch"], hidden_size=64, intermediate_size=128
    )
    split = leave_one_out(cyclic_data(n_users=64))
    trainer = _train(rec, split, tmp_path, max_steps=250)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] / 5
    assert after["eval_next_sid_token_accuracy"] > 0.9
    assert after["eval_next_sid_exact"] > 0.9


def test_save_load_gives_identical_logits(tmp_path, setup):
    rec, split = setup
    ids = history_token_ids(*split.train_sequence(0), rec.sids, rec.vocab)
    rec.lm.eval()
    with torch.no_grad():
        expected = rec.lm(ids[None]).logits
    rec.save_pretrained(tmp_path / "run")
    loaded = SIDRecModel.from_pretrained(tmp_path / "run")
    with torch.no_grad():
        got = loaded.lm(ids[None]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.sids.codes.tolist() == rec.sids.codes.tolist()
    assert loaded.vocab.level_start == rec.vocab.level_start


def test_resume_continues_at_the_checkpoint_step(tmp_path):
    torch.manual_seed(0)
    sids, split = synthetic_sids(), leave_one_out(cyclic_data())
    rec = SIDRecModel.build("tiny", sids, ["like", "watch"], hidden_size=32, intermediate_size=64)
    first = _train(rec, split, tmp_path, max_steps=6, save_steps=3, eval_data=False)
    first.train()
    assert (tmp_path / "checkpoint-3").exists() and (tmp_path / "checkpoint-6").exists()
    # an interrupted run: only the step-3 checkpoint survives
    import shutil

    shutil.rmtree(tmp_path / "checkpoint-6")
    torch.manual_seed(0)
    rec2 = SIDRecModel.build("tiny", sids, ["like", "watch"], hidden_size=32, intermediate_size=64)
    second = _train(rec2, split, tmp_path, max_steps=6, save_steps=3, eval_data=False)
    second.train(resume_from_checkpoint=True)
    steps = [h["step"] for h in second.state.log_history if "loss" in h or "train_loss" in h]
    assert second.state.global_step == 6
    assert min(steps) > 3  # nothing before the checkpoint was trained again
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


# ----- bad input ---------------------------------------------------------------------------


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path .*nope does not exist"):
        load_base_model(str(tmp_path / "nope"))


def test_max_items_too_small(setup):
    rec, split = setup
    with pytest.raises(ValueError, match="max_items=1 is too small"):
        build_train_windows(split, rec.sids, rec.vocab, max_items=1)


def test_outcome_missing_from_vocabulary(setup):
    rec, _ = setup
    data = cyclic_data()
    data.outcome_labels = ["like", "save"]
    with pytest.raises(
        ValueError, match=r"outcome label\(s\) \['save'\].*not in the model's vocabulary"
    ):
        build_train_windows(leave_one_out(data), rec.sids, rec.vocab, max_items=5)


def test_run_from_an_incompatible_sid_tokenizer_is_refused(tmp_path, setup):
    rec, _ = setup
    rec.save_pretrained(tmp_path / "run")
    other = SemanticIDs.from_codes(
        torch.tensor([[0, 0], [0, 1], [1, 0]]), ["a", "b", "c"], codebook_sizes=[2, 2]
    )
    other.save(tmp_path / "run")
    with pytest.raises(ValueError, match="trained on another SID tokenizer"):
        SIDRecModel.from_pretrained(tmp_path / "run")


def _tiny_lm(seed=0):
    from transformers import LlamaForCausalLM

    from sid.model import tiny_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(40, hidden_size=16, intermediate_size=32))


def test_dropout_acts_in_training_only_and_on_each_block():
    from sid.model import add_dropout

    plain, lm = _tiny_lm(), _tiny_lm()
    assert add_dropout(lm, 0.5) == 2  # the tiny Llama's two decoder layers
    x = torch.randint(0, 40, (3, 12))
    plain.eval(), lm.eval()
    assert torch.equal(lm(x).logits, plain(x).logits)  # evaluation is untouched
    seen = []
    first = lm.model.layers[0]
    first.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(
            (args[0] if args else kwargs["hidden_states"]).detach()
        ),
        with_kwargs=True,
    )
    lm.train(), plain.train()
    one, two = lm(x).logits, lm(x).logits
    assert not torch.equal(one, two) and torch.equal(plain(x).logits, plain(x).logits)
    embedded = lm.model.embed_tokens(x)
    kept = seen[0] != 0
    assert 0.2 < kept.float().mean() < 0.8  # half the entering hidden states dropped ...
    assert torch.allclose(seen[0][kept], 2 * embedded[kept])  # ... the rest scaled by 1/(1-p)


def test_dropout_refuses_bad_input():
    from sid.model import add_dropout

    lm = _tiny_lm()
    assert add_dropout(lm, 0.0) == 0 and not lm.model.layers[0]._forward_pre_hooks
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            add_dropout(lm, bad)
    with pytest.raises(ValueError, match="no self_attn / mlp blocks"):
        add_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.1)


def test_train_py_dropout_retrains_the_model_only(tmp_path):
    from conftest import pipeline_options, write_cycle_dataset

    from sid.run import run_training

    data = write_cycle_dataset(tmp_path)
    options = dict(ranker=False, prefixmem=True, dense=True)
    run = run_training(*pipeline_options(data, tmp_path / "run", **options))
    before = json.loads((run / "stages.json").read_text())
    with pytest.raises(ValueError, match="--dropout 1.0 is not allowed"):
        run_training(*pipeline_options(data, tmp_path / "run", dropout=1.0, **options))
    run_training(*pipeline_options(data, tmp_path / "run", dropout=0.3, **options))
    after = json.loads((run / "stages.json").read_text())
    assert after["model"] != before["model"] and after["semantic_ids"] == before["semantic_ids"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["dropout"] == 0.3
    rec = SIDRecModel.from_pretrained(run)  # saved as a plain LM: no hooks come back
    assert not rec.lm.model.layers[0]._forward_pre_hooks


def test_bench_dropout_times_each_arm_side_by_side(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dropout.py"
    spec = importlib.util.spec_from_file_location("bench_dropout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dropout.json"
    argv = ["--rounds", "1", "--batch", "2", "--tokens", "8", "--vocab", "20", "--out", str(out)]
    result = bench.main(argv)
    assert json.loads(out.read_text()) == result
    assert set(result["seconds_per_step"]) == {"none", "hidden", "attention"}
    assert result["ratio_to_none"]["none"] == 1.0 and min(result["seconds_per_step"].values()) > 0
    assert bench.build("attention", 0.2, 20).model.layers[0].self_attn.attention_dropout == 0.2
    assert bench.build("hidden", 0.2, 20).model.layers[0].self_attn.attention_dropout == 0.0
