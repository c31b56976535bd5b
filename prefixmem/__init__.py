"""PrefixMem: prefix n-gram memory tables that feed SID-prefix vectors to a causal LM."""
