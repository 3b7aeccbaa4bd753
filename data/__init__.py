"""recurlm.data: corpus -> SentencePiece tokenizer -> packed memory-mapped shards -> batches.

The default run calls::

    data = prepare(DataConfig())                      # cached after the first call
    loader = data.train_loader(seq_len, global_batch_size, rank, world_size)
    batch = next(loader)                              # Batch(input_ids, labels, resets, position)
    for batch in data.eval_batches(seq_len, batch_size, max_batches): ...

This package knows nothing of models beyond the tokenizer.
"""
from recurlm.data.config import DataConfig, SourceConfig, TokenizerConfig, default_cache_dir
from recurlm.data.loader import IGNORE_INDEX, Batch, PackedLoader, iter_eval_batches
from recurlm.data.prepare import PreparedData, prepare
from recurlm.data.shards import ShardError, ShardSet, check_tokenizer
from recurlm.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "DataConfig", "SourceConfig", "TokenizerConfig", "default_cache_dir",
    "IGNORE_INDEX", "Batch", "PackedLoader", "iter_eval_batches",
    "PreparedData", "prepare",
    "ShardError", "ShardSet", "check_tokenizer",
    "Tokenizer", "train_tokenizer",
]
