"""Small models of each foreign format, saved the way their own library saves them, and the code that
loads an exported directory back with that library in a fresh process (no recurlm import).

Every source has odd sizes (widths 40-52, 3 layers) and noise on every parameter (the libraries
initialise norms, biases and output projections to constants that would hide a wrong mapping).
fla's models run with their Triton ops swapped for fla's torch references
(``tests/helpers/fla_cpu.py``); the fresh process loads that one file by path, without
the recurlm package, because fla has no CPU path of its own.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import torch

VOCAB = 101
FLA_CPU = Path(__file__).resolve().parents[1] / "helpers" / "fla_cpu.py"
XLSTM_CPU_KERNELS = dict(chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                         step_kernel="native", autocast_kernel_dtype="float32", return_last_states=True)


def perturb_(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 if name.endswith("lower_bounds") else scale))
    return model


@dataclass
class Built:
    path: Path
    """What ``recurlm-convert import`` is given."""
    logits: Callable[[torch.Tensor], torch.Tensor]
    """The source model's logits [B, T, V] for ids [B, T] (float32)."""
    greedy: Optional[Callable[[list[int], int], list[int]]] = None
    """The source library's greedy continuation of a prompt (generate / RNN forward), if tested."""


@dataclass
class Source:
    format: str
    build: Callable[[Path], Built]
    loader: str
    """Python run in a fresh process: reads the exported directory ``OUT`` and ids ``IDS`` [B, T] and
    sets ``logits`` [B, T, V] with the target library only."""
    seq_len: int = 12


def fla_context(*families: str):
    warnings.filterwarnings("ignore")
    from ..helpers.fla_cpu import fla_torch_references

    return fla_torch_references(*families)


# -- transformers RecurrentGemma ------------------------------------------------------------------

def _recurrentgemma(block_types, tie, hidden, lru_width):
    def build(tmp: Path) -> Built:
        import transformers

        torch.manual_seed(0)
        config = transformers.RecurrentGemmaConfig(
            num_hidden_layers=3, vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * 52, num_attention_heads=4,
            num_key_value_heads=1, lru_width=lru_width, attention_window_size=6, block_types=list(block_types),
            tie_word_embeddings=tie, pad_token_id=0, eos_token_id=None, bos_token_id=2)
        model = perturb_(transformers.RecurrentGemmaForCausalLM(config).eval())
        model.save_pretrained(tmp / "src")

        def greedy(prompt: list[int], n: int) -> list[int]:
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False)
            return out[0, len(prompt):].tolist()

        return Built(tmp / "src", lambda ids: model(ids, use_cache=False).logits,
                     greedy if "attention" in block_types else None)  # transformers' Hawk cannot generate
    return build


TRANSFORMERS_LOADER = """
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(OUT).eval()
logits = model(IDS, use_cache=False).logits
"""

# -- xLSTM -----------------------------------------------------------------------------------------

def _hf_xlstm(hidden: int, mode: str = "train"):
    return lambda tmp: _hf_xlstm_build(tmp, hidden, mode)


def _hf_xlstm_build(tmp: Path, hidden: int, mode: str) -> Built:
    import transformers

    torch.manual_seed(0)
    config = transformers.xLSTMConfig(hidden_size=hidden, num_heads=2, num_blocks=3, vocab_size=VOCAB, chunk_size=8,
                                      mode=mode, ffn_round_up_to_multiple_of=16, gate_soft_cap=5.0,
                                      eos_token_id=None, **XLSTM_CPU_KERNELS)
    model = perturb_(transformers.xLSTMForCausalLM(config).eval())
    model.save_pretrained(tmp / "src")

    def greedy(prompt: list[int], n: int) -> list[int]:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        return out[0, len(prompt):].tolist()

    return Built(tmp / "src", lambda ids: model(ids, use_cache=False).logits, greedy)


HF_XLSTM_LOADER = f"""
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(OUT, mode="train", chunk_size=8, **{XLSTM_CPU_KERNELS!r}).eval()
logits = model(IDS, use_cache=False).logits
"""


def _xlstm_large(tmp: Path) -> Built:
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    torch.manual_seed(0)
    config = xLSTMLargeConfig(embedding_dim=40, num_heads=2, num_blocks=3, vocab_size=VOCAB, chunk_size=8, mode="train",
                              ffn_round_up_to_multiple_of=16, gate_soft_cap=5.0, output_logit_soft_cap=10.0,
                              **XLSTM_CPU_KERNELS)
    model = perturb_(xLSTMLarge(config).eval())
    (tmp / "src").mkdir()
    torch.save(model.state_dict(), tmp / "src" / "model.pth")
    (tmp / "src" / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    return Built(tmp / "src", lambda ids: model(ids)[0])


XLSTM_LARGE_LOADER = f"""
import json
from safetensors.torch import load_file
from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig
config = xLSTMLargeConfig(**json.load(open(OUT + "/config.json")), mode="train", chunk_size=8, **{XLSTM_CPU_KERNELS!r})
model = xLSTMLarge(config).eval()
model.load_state_dict(load_file(OUT + "/model.safetensors"))
logits = model(IDS)[0]
"""

# -- flash-linear-attention -------------------------------------------------------------------------

def _fla(family: str, make_config: Callable, adjust: Callable = lambda m: None):
    def build(tmp: Path) -> Built:
        with fla_context(family):
            import fla.models

            torch.manual_seed(0)
            config_cls, model_cls = {"rwkv7": (fla.models.RWKV7Config, fla.models.RWKV7ForCausalLM),
                                     "rwkv6": (fla.models.RWKV6Config, fla.models.RWKV6ForCausalLM),
                                     "hgrn2": (fla.models.HGRN2Config, fla.models.HGRN2ForCausalLM)}[family]
            model = perturb_(model_cls(make_config(config_cls)).eval(), seed=1)
        adjust(model)
        model.save_pretrained(tmp / "src")

        def logits(ids):
            with fla_context(family):
                return model(input_ids=ids, use_cache=False).logits

        def greedy(prompt: list[int], n: int) -> list[int]:
            # fla's generate does not carry its recurrent cache under transformers 5 (its tokens
            # disagree with its own forward after 3 steps), so decode by full forwards
            ids = list(prompt)
            with torch.no_grad():
                for _ in range(n):
                    ids.append(int(logits(torch.tensor([ids]))[0, -1].argmax()))
            return ids[len(prompt):]

        return Built(tmp / "src", logits, greedy)
    return build


def _realistic_rwkv6_decays(model):
    with torch.no_grad():  # exp(w) in (0, 1) well away from 0
        for layer in model.model.layers:
            layer.attn.w_proj.linear.lora[2].bias.uniform_(-3, 0)


FLA_LOADER = """
import importlib.util, warnings
warnings.filterwarnings("ignore")
import fla  # registers fla's configs and models with transformers' Auto classes
from transformers import AutoModelForCausalLM
spec = importlib.util.spec_from_file_location("fla_cpu", FLA_CPU)
fla_cpu = sys.modules["fla_cpu"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fla_cpu)
with fla_cpu.fla_torch_references(FAMILY):
    model = AutoModelForCausalLM.from_pretrained(OUT).eval()
    logits = model(input_ids=IDS, use_cache=False).logits
"""

# -- BlinkDL .pth ---------------------------------------------------------------------------------

def rwkv_package(family: str):
    """The ``rwkv`` package's RWKV class, imported for ``family`` (it reads RWKV_V7_ON on import)."""
    import importlib

    os.environ["RWKV_CUDA_ON"] = "0"
    if family == "rwkv7":
        os.environ["RWKV_V7_ON"] = "1"
    else:
        os.environ.pop("RWKV_V7_ON", None)
    module = sys.modules.get("rwkv.model")
    return (importlib.reload(module) if module is not None else importlib.import_module("rwkv.model")).RWKV


def _blinkdl(family: str):
    def build(tmp: Path) -> Built:
        from recurlm.models import build_model
        from recurlm.models.convert.rwkv_official import to_official
        from recurlm.models.registry import config_class

        sizes = dict(rwkv7=dict(decay_lora=8, iclr_lora=8, value_lora=8, gate_lora=16),
                     rwkv6=dict(mix_lora=8, decay_lora=16))[family]
        torch.manual_seed(0)
        cfg = config_class(family)(size="custom", vocab_size=VOCAB, d_model=40, n_layers=3, head_dim=8, ffn_hidden=136,
                                   **sizes)
        (tmp / "src").mkdir()
        torch.save(to_official(perturb_(build_model(cfg))), tmp / "src" / "model.pth")
        runtime = rwkv_package(family)(str(tmp / "src" / "model"), "cpu fp32")

        def logits(ids):
            return torch.stack([runtime.forward(row.tolist(), None, full_output=True)[0] for row in ids])

        def greedy(prompt: list[int], n: int) -> list[int]:  # RNN mode: one token per call
            out, state = runtime.forward(prompt, None)
            tokens = []
            for _ in range(n):
                tokens.append(int(out.argmax()))
                out, state = runtime.forward([tokens[-1]], state)
            return tokens

        return Built(tmp / "src" / "model.pth", logits, greedy)
    return build


BLINKDL_LOADER = """
import os
os.environ["RWKV_CUDA_ON"] = "0"
if FAMILY == "rwkv7":
    os.environ["RWKV_V7_ON"] = "1"
from rwkv.model import RWKV
runtime = RWKV(OUT + "/model", "cpu fp32")
logits = torch.stack([runtime.forward(row.tolist(), None, full_output=True)[0] for row in IDS])
"""


def _rwkv7_config(cls, tie=False):
    return cls(hidden_size=40, num_hidden_layers=3, head_dim=8, vocab_size=VOCAB, decay_low_rank_dim=8,
               a_low_rank_dim=8, v_low_rank_dim=8, gate_low_rank_dim=16, intermediate_size=136,
               tie_word_embeddings=tie, fuse_cross_entropy=False)


SOURCES = {
    "griffin": Source("hf-recurrentgemma", _recurrentgemma(("recurrent", "recurrent", "attention"), False, 48, 44),
                      TRANSFORMERS_LOADER),
    "hawk-tied": Source("hf-recurrentgemma", _recurrentgemma(("recurrent",), True, 40, 44), TRANSFORMERS_LOADER),
    "hf-xlstm": Source("hf-xlstm", _hf_xlstm(40), HF_XLSTM_LOADER, seq_len=16),
    # transformers' xLSTMCache rounds the head widths up to multiples of 64 / num_heads, so its
    # generate needs hidden_size * qk_dim_factor to be a multiple of 64 (and mode="inference")
    "hf-xlstm-128": Source("hf-xlstm", _hf_xlstm(128, "inference"), HF_XLSTM_LOADER, seq_len=16),
    "xlstm-large": Source("xlstm-large", _xlstm_large, XLSTM_LARGE_LOADER, seq_len=16),
    "fla-rwkv7-tied": Source("fla-rwkv7", _fla("rwkv7", lambda cls: _rwkv7_config(cls, tie=True)),
                             FLA_LOADER.replace("FAMILY", "'rwkv7'")),
    "fla-rwkv7": Source("fla-rwkv7", _fla("rwkv7", _rwkv7_config), FLA_LOADER.replace("FAMILY", "'rwkv7'")),
    "fla-rwkv6": Source("fla-rwkv6", _fla("rwkv6", lambda cls: cls(
        hidden_size=40, num_hidden_layers=3, num_heads=5, expand_k=1, expand_v=1, vocab_size=VOCAB, proj_low_rank_dim=8,
        gate_low_rank_dim=16, intermediate_size=72, fuse_cross_entropy=False), _realistic_rwkv6_decays),
        FLA_LOADER.replace("FAMILY", "'rwkv6'")),
    "fla-hgrn2-tied": Source("fla-hgrn2", _fla("hgrn2", lambda cls: cls(
        hidden_size=40, num_hidden_layers=3, expand_ratio=8, vocab_size=VOCAB, intermediate_size=72,
        tie_word_embeddings=True, fuse_cross_entropy=False)), FLA_LOADER.replace("FAMILY", "'hgrn2'")),
    "rwkv7-pth": Source("rwkv-pth", _blinkdl("rwkv7"), BLINKDL_LOADER.replace("FAMILY", "'rwkv7'")),
    "rwkv6-pth": Source("rwkv-pth", _blinkdl("rwkv6"), BLINKDL_LOADER.replace("FAMILY", "'rwkv6'")),
}


def load_in_fresh_process(loader: str, out_dir: Path, ids: torch.Tensor, tmp: Path) -> torch.Tensor:
    """Run ``loader`` in a new interpreter (no recurlm on its path or in its modules); its logits."""
    torch.save(ids, tmp / "ids.pt")
    script = (f"import sys, torch\nOUT = {str(out_dir)!r}\nFLA_CPU = {str(FLA_CPU)!r}\n"
              f"IDS = torch.load({str(tmp / 'ids.pt')!r})\ntorch.set_num_threads(1)\n"
              + textwrap.dedent(loader) +
              f"\nassert not [m for m in sys.modules if m.split('.')[0] == 'recurlm'], 'recurlm was imported'\n"
              f"torch.save(logits.detach().float(), {str(tmp / 'logits.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "logits.pt")


@pytest.fixture(params=[name for name in SOURCES if name != "hf-xlstm-128"])
def source(request) -> Source:
    """Each format (and its tied / untied variants)."""
    return SOURCES[request.param]


@pytest.fixture(params=["griffin", "hf-xlstm-128", "fla-rwkv7", "fla-hgrn2-tied", "rwkv7-pth", "rwkv6-pth"])
def decoding_source(request) -> Source:
    """Sources with a greedy reference: transformers' generate (its Hawk cannot generate), BlinkDL's
    RNN forward, full forwards of fla's models."""
    return SOURCES[request.param]


@pytest.fixture
def fresh_load():
    return load_in_fresh_process


@pytest.fixture
def helpers():
    """This module's helpers for tests that build their own sources (pytest's importlib mode keeps
    conftest modules out of reach of ``import``)."""
    return SimpleNamespace(fla_context=fla_context, perturb_=perturb_, load_in_fresh_process=load_in_fresh_process,
                           fla_loader=FLA_LOADER)
