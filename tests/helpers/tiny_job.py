"""The tiny training job of the trainer, recipe, launch and interop tests: a 300 kB slice of the
stdlib corpus, a 512-piece tokenizer and a tiny HGRN2 (the fixtures in tests/conftest.py compose it)."""

TINY_DATA = [
    "data.sources.0.max_bytes=300000",
    "data.tokenizer.vocab_size=512",
    "data.tokenizer.input_sentence_size=20000",
    "data.valid_fraction=0.05",
    "data.num_workers=1",
]
TINY_TRAIN = [
    "model.size=tiny",
    "train.seq_len=32",
    "train.global_batch_size=4",
    "train.eval_batches=2",
    "logger.progress=false",
    "logger.log_every=1",
]
