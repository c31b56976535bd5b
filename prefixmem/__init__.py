"""PrefixMem: prefix n-gram memory tables that feed SID-prefix vectors to a causal LM."""

from prefixmem.encoder import PrefixMem, PrefixMemEmbedding
from prefixmem.memory import PrefixMemConfig, PrefixMemory

__all__ = [
    "PrefixMem",
    "PrefixMemConfig",
    "PrefixMemEmbedding",
    "PrefixMemory",
    "pretrain_prefixmem",
]


def __getattr__(name):
    # pretrain pulls in tqdm; import it only when asked for
    if name == "pretrain_prefixmem":
        from prefixmem.pretrain import pretrain_prefixmem

        return pretrain_prefixmem
    raise AttributeError(name)
