"""``recurlm-data``: train a tokenizer, tokenize a corpus into shards, inspect and validate shards.

    recurlm-data tokenizer corpus/ --format text --vocab-size 4096 -o tok.model
    recurlm-data tokenize corpus.jsonl.zst --format jsonl --tokenizer tok.model -o shards/ --workers 2
    recurlm-data inspect shards/train --samples 3 --png lengths.png
    recurlm-data validate shards/train shards/valid --tokenizer tok.model

``tokenize`` is deterministic (same input, same bytes, any number of workers) and resumable: run
the same command again after an interruption and it continues after the last finished shard.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from recurlm.data.build import SPLITS, build_shards
from recurlm.data.config import SOURCE_KINDS, SourceConfig, TokenizerConfig
from recurlm.data.shards import MANIFEST, ShardError, ShardSet, check_tokenizer
from recurlm.data.sources import iter_documents
from recurlm.data.tokenizer import Tokenizer, train_tokenizer


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="files, directories or glob patterns")
    p.add_argument("--format", default="text", choices=[k for k in SOURCE_KINDS if k != "stdlib"] + ["stdlib"],
                   help="text: one document per file; jsonl: .jsonl/.jsonl.zst lines; parquet: rows; "
                        "hf_disk: a datasets save_to_disk directory; stdlib: the Python stdlib (inputs ignored)")
    p.add_argument("--text-field", default="text", help="record field holding the text (jsonl, parquet, hf_disk)")
    p.add_argument("--suffix", action="append", default=None,
                   help="file endings collected from directories for --format text (repeatable; default .py)")
    p.add_argument("--max-bytes", type=int, default=None, help="stop after this many bytes of text")
    p.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    p.add_argument("--name", default="corpus", help="source name (salts the validation hash)")


def _source(args: argparse.Namespace) -> SourceConfig:
    return SourceConfig(name=args.name, kind=args.format, paths=list(args.inputs),
                        suffixes=args.suffix or [".py"], text_field=args.text_field,
                        max_bytes=args.max_bytes, max_docs=args.max_docs)


def vocab_stats(tok: Tokenizer, sample_texts: Sequence[str]) -> dict:
    """Piece counts by kind and compression (characters per token) on sample texts."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(tok.sp.serialized_model_proto())
    type_names = {v: k.lower() for k, v in sentencepiece_model_pb2.ModelProto.SentencePiece.Type.items()}
    kinds: dict[str, int] = {}
    for piece in proto.pieces:
        kinds[type_names[piece.type]] = kinds.get(type_names[piece.type], 0) + 1
    lengths = [len(p.piece) for p in proto.pieces if p.type == sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL]
    chars = sum(len(t) for t in sample_texts)
    tokens = sum(len(ids) for ids in tok.encode_batch(list(sample_texts))) if sample_texts else 0
    return {"vocab_size": tok.vocab_size, **kinds, "mean_piece_chars": float(np.mean(lengths)) if lengths else 0.0,
            "chars_per_token": chars / max(tokens, 1), "sample_docs": len(sample_texts)}


def cmd_tokenizer(args: argparse.Namespace) -> int:
    cfg = TokenizerConfig(vocab_size=args.vocab_size, model_type=args.model_type,
                          byte_fallback=not args.no_byte_fallback, character_coverage=args.character_coverage,
                          input_sentence_size=args.input_sentence_size, user_defined_symbols=args.special_token or [],
                          seed=args.seed, num_threads=args.threads)
    src = _source(args)
    tok = train_tokenizer((d.text for d in iter_documents(src)), cfg, args.output)
    sample = [d.text for _, d in zip(range(200), iter_documents(src))]
    stats = vocab_stats(tok, sample)
    print(f"wrote {tok.path} (sha256 {tok.sha256})")
    print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    tok = Tokenizer(args.tokenizer)
    sets = build_shards(_source(args), tok, args.output, valid_fraction=args.valid_fraction,
                        split_seed=args.split_seed, shard_tokens=args.shard_tokens, num_workers=args.workers,
                        progress=not args.quiet)
    for split in SPLITS:
        print(f"{split}: {sets[split].num_docs} docs, {sets[split].num_tokens:,} tokens, "
              f"{len(sets[split].shards)} shard(s) in {os.path.join(args.output, split)}")
    return 0


def _split_dirs(paths: Sequence[str]) -> list[str]:
    """Accept split directories or a build directory holding ``train``/``valid``."""
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, MANIFEST)):
            out.append(p)
        else:
            found = [os.path.join(p, s) for s in SPLITS if os.path.isfile(os.path.join(p, s, MANIFEST))]
            out.extend(found or [p])  # ShardSet.open names the missing manifest
    return out


def _histogram(lengths: np.ndarray, bins: int = 12, width: int = 50) -> str:
    edges = np.unique(np.geomspace(max(lengths.min(), 1), lengths.max() + 1, bins + 1).astype(np.int64))
    counts, edges = np.histogram(lengths, bins=edges)
    top = max(counts.max(), 1)
    return "\n".join(f"  {lo:>9,}-{hi - 1:<9,} {n:>8,} {'#' * int(round(width * n / top))}"
                     for lo, hi, n in zip(edges[:-1], edges[1:], counts))


def cmd_inspect(args: argparse.Namespace) -> int:
    dirs = _split_dirs(args.dirs)
    for d in dirs:
        shards = ShardSet.open(d)
        m = shards.manifests[0]
        lengths = shards.doc_lengths
        print(f"{d}: source={m['source']} split={m['split']} docs={shards.num_docs:,} tokens={shards.num_tokens:,} "
              f"shards={len(shards.shards)} dtype={m['dtype']} vocab={m['vocab_size']} "
              f"tokenizer={m['tokenizer_sha256'][:16]} skipped={m.get('skipped', {})}")
        if not shards.num_docs:
            continue
        q = np.percentile(lengths, [50, 90, 99])
        print(f"  document tokens: mean {lengths.mean():,.1f}, median {q[0]:,.0f}, p90 {q[1]:,.0f}, "
              f"p99 {q[2]:,.0f}, max {lengths.max():,}")
        print(_histogram(lengths))
        if args.png:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            png = args.png if len(dirs) == 1 else f"{os.path.splitext(args.png)[0]}_{m['source']}_{m['split']}.png"
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.hist(lengths, bins=np.geomspace(max(lengths.min(), 1), lengths.max() + 1, 40))
            ax.set(xscale="log", xlabel="tokens per document (BOS/EOS included)", ylabel="documents",
                   title=f"{m['source']}/{m['split']}: {shards.num_docs:,} docs, {shards.num_tokens:,} tokens")
            fig.tight_layout()
            fig.savefig(png)
            plt.close(fig)
            print(f"  histogram saved to {png}")
        tok_path = args.tokenizer or m.get("tokenizer_path")
        if args.samples and tok_path and os.path.isfile(tok_path):
            tok = Tokenizer(tok_path)
            check_tokenizer(shards, tok)
            rng = np.random.default_rng(args.seed)
            for i in rng.choice(shards.num_docs, size=min(args.samples, shards.num_docs), replace=False):
                text = tok.decode(shards.document(int(i)))
                more = f"... [{len(text) - args.chars:,} more chars]" if len(text) > args.chars else ""
                print(f"  --- document {int(i)} ({int(lengths[i])} tokens) ---\n{text[:args.chars]}{more}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    tok = Tokenizer(args.tokenizer) if args.tokenizer else None
    failed = 0
    for d in _split_dirs(args.dirs):
        try:
            shards = ShardSet.open(d)
            shards.validate(progress=not args.quiet)
            if tok is not None:
                check_tokenizer(shards, tok)
        except (ShardError, OSError) as e:
            print(f"FAIL {d}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"ok   {d}: {shards.num_docs:,} docs, {shards.num_tokens:,} tokens, {len(shards.shards)} shard(s)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    _add_source_args(p)
    p.add_argument("-o", "--output", required=True, help="path of the .model file to write")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    p.add_argument("--no-byte-fallback", action="store_true", help="map unknown characters to <unk>")
    p.add_argument("--character-coverage", type=float, default=0.9999)
    p.add_argument("--input-sentence-size", type=int, default=200_000,
                   help="line-chunk sentences sampled for training (0 = all)")
    p.add_argument("--special-token", action="append", help="user-defined piece kept whole (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("tokenize", help="tokenize a corpus into train/valid shards (parallel, resumable)")
    _add_source_args(p)
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("-o", "--output", required=True, help="output directory (gets train/ and valid/)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--valid-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--shard-tokens", type=int, default=50_000_000)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("inspect", help="manifest summary, length histogram, sample documents")
    p.add_argument("dirs", nargs="+", help="split directories or build directories")
    p.add_argument("--tokenizer", help="decode with this model (default: the manifest's)")
    p.add_argument("--samples", type=int, default=2, help="random documents to decode")
    p.add_argument("--chars", type=int, default=400, help="characters shown per document")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", help="save the length histogram here")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="verify checksums, index consistency and token ranges")
    p.add_argument("dirs", nargs="+", help="split directories or build directories")
    p.add_argument("--tokenizer", help="also check the shards were made with this model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ShardError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"recurlm-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
