"""Fixtures of the kernel tests (their comparison harness is ``harness.py``)."""
import pytest

from recurlm.kernels.dispatch import triton_interpreting

from .fla_interpret import fla_interpreter as _fla_interpreter


@pytest.fixture
def fla_interpreter():
    """fla's Triton kernels (behind gla, rwkv6 and dplr_delta_rule) made runnable in the CPU
    interpreter for the test (see fla_interpret.py)."""
    if not triton_interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    with _fla_interpreter():
        yield
