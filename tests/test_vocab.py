import json

import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from sid.vocab import SIDVocab

WORDS = ["<pad>", "<unk>", "<s>", "the", "movie", "was", "good", "bad", "and", "i"]


def bound_vocab(sizes=(4, 3, 5), outcomes=("like", "watch")):
    tok = word_tokenizer(WORDS)
    vocab = SIDVocab(list(sizes), list(outcomes))
    vocab.add_to_tokenizer(tok)
    return vocab, tok


def test_token_strings_use_level_letters():
    vocab = SIDVocab([256, 256, 256, 4], ["like", "watch"])
    assert vocab.sid_token(0, 12) == "<a_12>"
    assert vocab.sid_token(1, 7) == "<b_7>"
    assert vocab.sid_token(2, 201) == "<c_201>"
    assert vocab.sid_token(3, 0) == "<d_0>"
    assert vocab.outcome_token("like") == "<like>"
    assert len(vocab.tokens()) == 256 * 3 + 4 + 2


def test_tokens_round_trip_string_id_level_code():
    vocab, tok = bound_vocab()
    codes = torch.tensor([[3, 0, 4], [0, 2, 1]])
    ids = vocab.sid_token_ids(codes)
    strings = [tok.convert_ids_to_tokens(row.tolist()) for row in ids]
    assert strings == [["<a_3>", "<b_0>", "<c_4>"], ["<a_0>", "<b_2>", "<c_1>"]]
    assert torch.equal(torch.tensor([tok.convert_tokens_to_ids(s) for s in strings]), ids)
    level, code = vocab.token_levels_codes(ids)
    assert torch.equal(level, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    assert torch.equal(code, codes)


def test_text_tokenizer_never_splits_sid_tokens():
    vocab, tok = bound_vocab()
    ids = tok("the movie <like><a_3><b_0><c_4> was good", add_special_tokens=False)["input_ids"]
    level, code = vocab.token_levels_codes(torch.tensor(ids))
    assert ids[2] == vocab.outcome_id("like")
    assert level.tolist() == [-1, -1, -1, 0, 1, 2, -1, -1]
    assert code[3:6].tolist() == [3, 0, 4]


def test_level_ids_are_contiguous_after_binding():
    vocab, tok = bound_vocab()
    for level, (start, k) in enumerate(zip(vocab.level_start, vocab.codebook_sizes, strict=True)):
        for c in range(k):
            assert tok.convert_tokens_to_ids(vocab.sid_token(level, c)) == start + c


def test_rebinding_a_tokenizer_that_has_the_tokens_keeps_ids():
    vocab, tok = bound_vocab()
    again = SIDVocab([4, 3, 5], ["like", "watch"])
    again.add_to_tokenizer(tok)
    assert again.level_start == vocab.level_start
    assert again.outcome_ids == vocab.outcome_ids


def test_partial_level_already_present_raises_not_contiguous():
    tok = word_tokenizer(WORDS)
    tok.add_tokens(["<b_1>"], special_tokens=True)
    with pytest.raises(ValueError, match="not contiguous"):
        SIDVocab([4, 3], ["like"]).add_to_tokenizer(tok)


def test_unknown_outcome_raises_with_known_labels():
    vocab, _ = bound_vocab()
    with pytest.raises(ValueError, match=r"'click'.*\['like', 'watch'\]"):
        vocab.outcome_id("click")


def test_out_of_range_code_raises():
    vocab, _ = bound_vocab()
    with pytest.raises(ValueError, match="out of range"):
        vocab.sid_token_ids(torch.tensor([[4, 0, 0]]))


def test_unbound_vocab_raises_clear_error():
    with pytest.raises(ValueError, match="add_to_tokenizer"):
        SIDVocab([4], ["like"]).sid_token_ids(torch.tensor([[1]]))


def test_to_dict_from_dict_round_trip_through_json():
    vocab, _ = bound_vocab()
    back = SIDVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert back.level_start == vocab.level_start
    assert back.outcome_ids == vocab.outcome_ids
    assert back.codebook_sizes == vocab.codebook_sizes
    ids = torch.tensor([vocab.level_start[1] + 2])
    assert back.token_levels_codes(ids)[1].tolist() == [2]


@pytest.mark.parametrize("tie", [True, False])
def test_resize_model_new_rows_have_old_rows_norm(tie):
    tok = word_tokenizer(WORDS)
    model = tiny_llama(len(tok), tie_word_embeddings=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    vocab = SIDVocab([16, 16, 8], ["like", "watch"])
    vocab.add_to_tokenizer(tok)
    vocab.resize_model(model)
    w_in = model.get_input_embeddings().weight.detach()
    w_out = model.get_output_embeddings().weight.detach()
    assert w_in.shape[0] == len(tok) == len(WORDS) + 16 + 16 + 8 + 2
    assert w_out.shape[0] == len(tok)
    # existing rows untouched
    assert torch.equal(w_in[: len(WORDS)], old_in)
    assert torch.equal(w_out[: len(WORDS)], old_out)
    for w, old in ((w_in, old_in), (w_out, old_out)):
        new_norm = w[len(WORDS) :].norm(dim=1)
        assert torch.allclose(new_norm, old.norm(dim=1).mean().expand_as(new_norm), rtol=1e-4)
        # rows are distinct, so codes can be told apart from the first step
        assert torch.cdist(w[len(WORDS) :], w[len(WORDS) :]).add(torch.eye(42)).min() > 1e-3
    assert (w_in.data_ptr() == w_out.data_ptr()) == tie
    # forward runs over new ids
    out = model(input_ids=torch.tensor([[1, vocab.level_start[2] + 7, vocab.outcome_id("like")]]))
    assert out.logits.shape == (1, 3, len(tok))
    assert torch.isfinite(out.logits).all()


def test_an_unconditioned_vocab_writes_every_outcome_as_one_token():
    tok = word_tokenizer(WORDS)
    vocab = SIDVocab([4, 3, 5], ["like", "watch"], slots=2, conditioned=False)
    assert vocab.tokens()[-2:] == ["<any>", "<next_2>"]
    assert vocab.outcome_token("watch") == "<any>"
    vocab.add_to_tokenizer(tok)
    any_id = tok.convert_tokens_to_ids("<any>")
    assert vocab.outcome_ids == {"like": any_id, "watch": any_id}
    assert "<like>" not in tok.get_vocab()
    assert vocab.all_token_ids().tolist().count(any_id) == 1
    rows = vocab.item_token_ids(torch.tensor([[1, 2, 3], [0, 0, 0]]), torch.tensor([0, 1]))
    assert rows[:, 0].tolist() == [any_id, any_id]
    with pytest.raises(ValueError, match="unknown outcome"):
        vocab.outcome_id("save")
    back = SIDVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert not back.conditioned and back.outcome_ids == vocab.outcome_ids
    assert back.slot_ids == vocab.slot_ids
    assert SIDVocab.from_dict(bound_vocab()[0].to_dict()).conditioned
    broken = {**vocab.to_dict(), "outcome_ids": {"like": any_id, "watch": any_id + 1}}
    with pytest.raises(ValueError, match="one token"):
        SIDVocab.from_dict(broken)
