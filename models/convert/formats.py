"""Checkpoint formats of other projects, and the two conversions between them and recurlm exports.

A :class:`Format` describes one foreign layout: how to recognise it, the recurlm config it implies,
and the tensor mapping in each direction as a list of :class:`Entry` (one output tensor computed
from one or more input tensors). ``import_checkpoint`` and ``export_checkpoint`` run a mapping
tensor by tensor (``recurlm.models.convert.io``: lazy reads, shard-by-shard writes) and check it
against the shapes of the model on the other side, built on the meta device. Formats
(``recurlm-convert import --format`` / ``export-hf --format``):

| name | families | files |
|---|---|---|
| hf-recurrentgemma | griffin, hawk | transformers ``RecurrentGemmaForCausalLM`` dir |
| hf-xlstm | xlstm (xlstm7b) | transformers ``xLSTMForCausalLM`` dir |
| xlstm-large | xlstm (xlstm7b) | ``xlstm`` package ``xLSTMLarge`` state dict + its config as config.json |
| fla-rwkv7 / fla-rwkv6 / fla-hgrn2 | rwkv7 / rwkv6 / hgrn2 | flash-linear-attention HF dir |
| rwkv-pth | rwkv7, rwkv6 | BlinkDL ``.pth`` (x070 / x060 key names) |

Titans has no format shared with another project: recurlm exports only.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from recurlm.models.config import ModelConfig
from recurlm.models.convert.io import ConversionError, ShardedWriter, WeightReader, staged_output

CONFIG_JSON = "config.json"
SPECIAL_TOKEN_IDS = dict(pad_token_id=3, bos_token_id=1, eos_token_id=2)
"""recurlm's SentencePiece ids (recurlm.data.tokenizer), written into exported configs."""


def same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Entry:
    """Output tensor ``target`` = ``transform(*inputs named by sources)``."""
    target: str
    sources: tuple[str, ...]
    transform: Callable[..., torch.Tensor] = same


def pairs_to_entries(pairs: list[tuple[str, str, Callable, Callable]], to_recurlm: bool) -> list[Entry]:
    """(recurlm key, foreign key, foreign -> recurlm, recurlm -> foreign) pairs as entries of one direction."""
    if to_recurlm:
        return [Entry(ours, (theirs,), to_ours) for ours, theirs, to_ours, _ in pairs]
    return [Entry(theirs, (ours,), to_theirs) for ours, theirs, _, to_theirs in pairs]


class Format(ABC):
    """One foreign checkpoint layout. Subclasses set the class attributes and implement the methods;
    errors they raise as ValueError / KeyError / TypeError are reported against the source's config
    file (or its weights when it has none)."""

    name: str = ""
    families: tuple[str, ...] = ()
    """recurlm families this format holds; the first format listing a family is its export default."""
    loader: str = ""
    """How the other side loads an exported directory (for messages and docs)."""
    needs_config: bool = True
    """The source must have a config.json (False: sizes are read from the tensor shapes)."""
    weights_file: Optional[str] = None
    """Export as one torch file of this name (torch.save) instead of safetensors shards."""
    sharded: bool = True
    """The loader reads ``model.safetensors.index.json`` shards (False: always one model.safetensors)."""
    hf_tokenizer: bool = False
    """Export the model's SentencePiece tokenizer as transformers' tokenizer.json (a directory that
    ``AutoTokenizer`` reads)."""

    @abstractmethod
    def detect(self, config: Optional[dict], keys: list[str]) -> bool:
        """Whether a source with this ``config.json`` (None: absent) and these tensor names is ours."""

    @abstractmethod
    def recurlm_config(self, config: Optional[dict], shapes: dict[str, torch.Size]) -> ModelConfig:
        """The recurlm config of a source with this config.json and these tensor shapes."""

    @abstractmethod
    def import_entries(self, cfg: ModelConfig, keys: list[str]) -> list[Entry]:
        """How every recurlm tensor is made from the source's tensors (named ``keys``)."""

    def ignored_keys(self, cfg: ModelConfig, keys: list[str]) -> set[str]:
        """Source tensors that are legitimately unused (e.g. a tied head saved anyway)."""
        return set()

    @abstractmethod
    def export_entries(self, cfg: ModelConfig) -> list[Entry]:
        """How every tensor of the target is made from the recurlm tensors."""

    @abstractmethod
    def write_config(self, cfg: ModelConfig, out_dir: str) -> None:
        """Write the foreign config files of ``cfg`` into ``out_dir``."""

    def target_shapes(self, out_dir: str) -> Optional[dict[str, torch.Size]]:
        """Tensor shapes of the target model built from the config just written; None only for a
        ``weights_file`` format (no model class to build; safetensors shards are laid out from these)."""
        return None


def hf_meta_shapes(model_class: type, out_dir: str) -> dict[str, torch.Size]:
    """Shapes of the tensors a transformers-style ``model_class`` loads from ``out_dir``'s config (built
    on the meta device; a tied ``lm_head.weight`` is left out, as ``save_pretrained`` does)."""
    config = model_class.config_class.from_pretrained(out_dir)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in model_class(config).state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


FORMATS: dict[str, str] = {
    "hf-recurrentgemma": "recurlm.models.convert.recurrentgemma:HFRecurrentGemma",
    "hf-xlstm": "recurlm.models.convert.xlstm:HFXLSTM",
    "xlstm-large": "recurlm.models.convert.xlstm:XLSTMLargeStateDict",
    "fla-rwkv7": "recurlm.models.convert.fla_rwkv:FlaRWKV7",
    "fla-rwkv6": "recurlm.models.convert.fla_rwkv:FlaRWKV6",
    "fla-hgrn2": "recurlm.models.convert.fla_hgrn2:FlaHGRN2",
    "rwkv-pth": "recurlm.models.convert.rwkv_official:BlinkDLPth",
}
"""Format name -> ``module:class`` (imported on first use)."""


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ConversionError(f"unknown format {name!r}; choose one of {sorted(FORMATS)} (or auto)")
    module, cls = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def read_foreign_config(path: str) -> tuple[Optional[dict], str]:
    """(config.json next to the weights or None, its path)."""
    where = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), CONFIG_JSON)
    if not os.path.isfile(where):
        return None, where
    try:
        with open(where) as f:
            return json.load(f), where
    except json.JSONDecodeError as err:
        raise ConversionError(f"{where}: not valid JSON ({err})") from err


def detect_format(path: str, config: Optional[dict], keys: list[str]) -> Format:
    found = [name for name in FORMATS if get_format(name).detect(config, keys)]
    if len(found) == 1:
        return get_format(found[0])
    model_type = (config or {}).get("model_type")
    if model_type is not None:
        raise ConversionError(f"{read_foreign_config(path)[1]}: model_type {model_type!r} is not a format recurlm "
                              f"reads (known: {sorted(FORMATS)}); Titans and other families have no shared format")
    raise ConversionError(f"{path}: cannot tell the format ({'no config.json, ' if config is None else ''}"
                          f"tensor names such as {keys[:3]} match {found or 'none'} of {sorted(FORMATS)}); "
                          f"pass --format")


def foreign_format(path: str) -> Optional[str]:
    """The format name of a foreign checkpoint at ``path``, or None (a recurlm run dir, checkpoint or
    export, or nothing recognisable); never raises."""
    try:
        config, _ = read_foreign_config(path)
        return detect_format(path, config, WeightReader(path).keys()).name
    except ConversionError:
        return None


def _meta_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from recurlm.models.registry import build_model

    with torch.device("meta"):
        return {k: v.shape for k, v in build_model(cfg).state_dict().items()}


def _check_keys(entries: list[Entry], available: list[str], ignored: set[str], produced_expected: set[str],
                where: str) -> None:
    """Sources exist, every available tensor is used (or ignored), the outputs are exactly the expected ones."""
    used = {s for e in entries for s in e.sources}
    missing = sorted(used - set(available))
    unexpected = sorted(set(available) - used - ignored)
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    produced = {e.target for e in entries}
    if produced != produced_expected:
        problems.append(f"the mapping gives {sorted(produced - produced_expected)} it should not and lacks "
                        f"{sorted(produced_expected - produced)}")
    if problems:
        raise ConversionError(f"{where}: " + "; ".join(problems))


def _convert(entries: list[Entry], reader: WeightReader, expected: Optional[dict[str, torch.Size]],
             add: Callable[[str, torch.Tensor], None]) -> None:
    for entry in entries:
        inputs = [reader.get(s) for s in entry.sources]
        tensor = entry.transform(*inputs)
        if expected is not None and tuple(tensor.shape) != tuple(expected[entry.target]):
            source = ", ".join(f"{s} {tuple(t.shape)} in {reader.file_of(s)}" for s, t in zip(entry.sources, inputs))
            raise ConversionError(f"{source}: gives {entry.target} of shape {tuple(tensor.shape)}, but the config "
                                  f"implies {tuple(expected[entry.target])}")
        add(entry.target, tensor)


def _shapes(reader: WeightReader) -> dict[str, torch.Size]:
    return {key: reader.shape(key) for key in reader.keys()}


def import_checkpoint(path: str, out: str, format: str = "auto", tokenizer: Optional[str] = None) -> str:
    """Write a recurlm export of the foreign checkpoint at ``path`` into ``out``; returns ``out``."""
    from recurlm.models.pretrained import TOKENIZER, write_export_files

    config, config_path = read_foreign_config(path)
    reader = WeightReader(path)
    fmt = detect_format(path, config, reader.keys()) if format == "auto" else get_format(format)
    if fmt.needs_config and config is None:
        raise ConversionError(f"{config_path}: missing (a {fmt.name} checkpoint needs its config.json)")
    try:
        cfg = fmt.recurlm_config(config, _shapes(reader))
    except (ValueError, TypeError, KeyError) as err:
        if isinstance(err, ConversionError):
            raise
        raise ConversionError(f"{config_path if config is not None else reader.path}: {err}") from err
    expected = _meta_shapes(cfg)
    entries = fmt.import_entries(cfg, reader.keys())
    _check_keys(entries, reader.keys(), fmt.ignored_keys(cfg, reader.keys()), set(expected), reader.path)
    source_tokenizer = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), TOKENIZER)
    if tokenizer is None and os.path.isfile(source_tokenizer):
        tokenizer = source_tokenizer
    info = {"imported_from": os.path.abspath(path), "format": fmt.name}
    if tokenizer is not None:
        from recurlm.models.checkpoint_files import file_sha256

        info["tokenizer_sha256"] = file_sha256(tokenizer)
    else:
        info["tokenizer"] = ("not included: the source has no SentencePiece tokenizer.model; pass --tokenizer or "
                             "set data.tokenizer_path to the tokenizer these weights were trained with")
    with staged_output(out) as staging:
        writer = ShardedWriter(staging, [(e.target, tuple(expected[e.target])) for e in entries])
        _convert(entries, reader, expected, writer.add)
        writer.close()
        write_export_files(staging, cfg, tokenizer, info)
    return out


def default_format(family: str) -> Format:
    for name in FORMATS:
        fmt = get_format(name)
        if family in fmt.families:
            return fmt
    raise ConversionError(f"family {family!r} has no format shared with another project (Titans is recurlm-only); "
                          f"`recurlm-convert export` writes a recurlm export")


def export_checkpoint(path: str, out: str, format: Optional[str] = None,
                      max_shard_bytes: Optional[int] = None) -> str:
    """Write the recurlm model at ``path`` (run dir, checkpoint or export) in a foreign format into ``out``."""
    from recurlm.models.pretrained import CONFIG, is_export, tokenizer_file
    from recurlm.models.registry import to_model_config
    from recurlm.models.pretrained import export_checkpoint as export_recurlm

    export = path if is_export(path) else export_recurlm(path)
    with open(os.path.join(export, CONFIG)) as f:
        cfg = to_model_config(json.load(f))
    where = os.path.join(export, CONFIG)
    fmt = default_format(cfg.family) if format is None else get_format(format)
    if cfg.family not in fmt.families:
        raise ConversionError(f"{where}: family {cfg.family!r} cannot be written as {fmt.name} "
                              f"(it holds {list(fmt.families)})")
    overrides = getattr(cfg, "layer_overrides", None)
    if overrides:
        raise ConversionError(f"{where}: layers {sorted(overrides)} override the model config; {fmt.name} has one "
                              f"config for every layer (expand all layers, or keep the recurlm export)")
    reader = WeightReader(export)
    entries = fmt.export_entries(cfg)
    with staged_output(out) as staging:
        try:
            fmt.write_config(cfg, staging)
        except ValueError as err:
            raise ConversionError(f"{where}: {err}") from err
        expected = fmt.target_shapes(staging)
        _check_keys(entries, reader.keys(), set(), set(expected) if expected is not None else
                    {e.target for e in entries}, export)
        if fmt.weights_file:
            tensors: dict[str, torch.Tensor] = {}
            _convert(entries, reader, expected, lambda k, t: tensors.__setitem__(k, t.float().contiguous().clone()))
            torch.save(tensors, os.path.join(staging, fmt.weights_file))
        else:
            writer = ShardedWriter(staging, [(e.target, tuple(expected[e.target])) for e in entries],
                                   max_shard_bytes if fmt.sharded else None)
            _convert(entries, reader, expected, writer.add)
            writer.close()
        if fmt.hf_tokenizer and tokenizer_file(export):
            from recurlm.models.convert.hf_tokenizer import write_hf_tokenizer

            try:
                write_hf_tokenizer(tokenizer_file(export), staging)
            except ValueError as err:  # a SentencePiece model recurlm did not train: weights are still exact
                logging.getLogger(__name__).warning("%s: no tokenizer.json written (%s); give the target library "
                                                    "the source model's own tokenizer", out, err)
    return out
