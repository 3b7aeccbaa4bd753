"""recurlm's SentencePiece model as a transformers tokenizer (``tokenizer.json``) that encodes exactly
as ``recurlm.data.tokenizer.Tokenizer``, for exported directories (``AutoTokenizer.from_pretrained``).

transformers 5's ``LlamaTokenizer(vocab_file=...)`` no longer reads a SentencePiece file, so the
``tokenizers`` pipeline is built here from the model proto, for the options recurlm trains with
(``recurlm.data.tokenizer.train_tokenizer``): identity normalisation with spaces as "▁", no dummy
prefix, words that start at a run of whitespace (``allow_whitespace_only_pieces``), digits split,
byte fallback; BPE (merges from the piece ranks) or unigram (the piece scores). A model trained
with other options (a dummy prefix, whitespace as suffix, a normaliser) is refused. Encoding with
special tokens prepends ``<s>``, as recurlm's documents start.
"""
from __future__ import annotations

import os
import shutil

SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def _proto(path: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, the merges of a piece ranked by its id (SentencePiece's
    BPE applies the highest-scoring, i.e. earliest, piece first), then by the parts' ids."""
    merges = []
    for piece, rank in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


def build_tokenizer(sentencepiece_model: str):
    """A ``PreTrainedTokenizerFast`` equal to the SentencePiece model (ValueError for options it cannot mirror)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    proto = _proto(sentencepiece_model)
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    unsupported = {"add_dummy_prefix": normalizer.add_dummy_prefix,
                   "treat_whitespace_as_suffix": trainer.treat_whitespace_as_suffix,
                   f"normalization_rule_name={normalizer.name!r}": normalizer.name not in ("identity", ""),
                   "remove_extra_whitespaces": normalizer.remove_extra_whitespaces,
                   "allow_whitespace_only_pieces=False": not trainer.allow_whitespace_only_pieces}
    if any(unsupported.values()):
        raise ValueError(f"{sentencepiece_model}: cannot mirror SentencePiece options "
                         f"{[k for k, v in unsupported.items() if v]} in a tokenizer.json")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if trainer.model_type == trainer.BPE:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab=vocab, merges=_bpe_merges(vocab), unk_token=proto.pieces[trainer.unk_id].piece,
                           byte_fallback=trainer.byte_fallback, fuse_unk=True)
    elif trainer.model_type == trainer.UNIGRAM:
        model = models.Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise ValueError(f"{sentencepiece_model}: model type {trainer.model_type} is neither BPE nor unigram")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    # SentencePiece's words: a run of "▁" starts one, other characters continue it
    splits = [pre_tokenizers.Split(Regex("▁+[^▁]*|[^▁]+"), behavior="isolated")]
    if trainer.split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    types = type(proto.pieces[0])
    specials = [p.piece for p in proto.pieces if p.type in (types.CONTROL, types.UNKNOWN)]
    user_defined = [p.piece for p in proto.pieces if p.type == types.USER_DEFINED]
    bos = proto.pieces[trainer.bos_id].piece
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                             special_tokens=[(bos, trainer.bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIALS)
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in SPECIALS.values()]})
    fast.add_tokens(user_defined)
    return fast


def write_hf_tokenizer(sentencepiece_model: str, out_dir: str) -> None:
    """tokenizer.json + tokenizer_config.json for transformers, and the SentencePiece model itself
    (so ``recurlm-convert import`` of the directory finds it again)."""
    build_tokenizer(sentencepiece_model).save_pretrained(out_dir)
    shutil.copyfile(sentencepiece_model, os.path.join(out_dir, "tokenizer.model"))
