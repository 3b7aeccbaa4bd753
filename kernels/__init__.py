"""recurlm.kernels: the recurrences of every model family, one public function per op.

Each op has a naive sequential reference, a PyTorch chunkwise path and a Triton kernel behind
``impl="auto"|"naive"|"chunk"|"triton"`` (auto: Triton on CUDA, chunk elsewhere). See the
module docstring of each op for the math, shapes and a varlen example.
"""
from recurlm.kernels.dplr_delta_rule import dplr_delta_rule
from recurlm.kernels.gla import gla
from recurlm.kernels.linear_scan import linear_scan
from recurlm.kernels.local_attention import local_attention
from recurlm.kernels.mlstm import mlstm
from recurlm.kernels.rwkv6 import rwkv6
from recurlm.kernels.slstm import slstm
from recurlm.kernels.titans_memory import titans_memory

__all__ = ["dplr_delta_rule", "gla", "linear_scan", "local_attention", "mlstm", "rwkv6", "slstm", "titans_memory"]
