import math

import pytest

from recurlm.train.config import ScheduleConfig
from recurlm.train.optimizer import lr_multiplier


def curve(cfg, steps=100, tokens_per_step=10):
    return [lr_multiplier(cfg, s, s * tokens_per_step, steps, tokens_per_step) for s in range(steps)]


def test_cosine_warms_up_then_decays_to_the_floor():
    lr = curve(ScheduleConfig(name="cosine", warmup=10, min_lr_ratio=0.1))
    assert lr[0] < lr[5] < lr[9] <= 1.0
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert lr[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_is_flat_until_the_decay_phase():
    lr = curve(ScheduleConfig(name="wsd", warmup=0.1, decay=0.2, min_lr_ratio=0.0))
    assert all(v == 1.0 for v in lr[10:80])
    assert lr[90] == pytest.approx(0.5) and lr[-1] == pytest.approx(0.05)  # linear to the floor at the end


def test_wsd_decay_can_start_anywhere():
    lr = curve(ScheduleConfig(name="wsd", warmup=0, decay_start=40, min_lr_ratio=0.0))
    assert lr[39] == 1.0 and lr[40] == 1.0 and lr[70] == pytest.approx(0.5, abs=0.02)


def test_token_units_match_step_units():
    steps = curve(ScheduleConfig(name="cosine", warmup=10, unit="steps"))
    tokens = curve(ScheduleConfig(name="cosine", warmup=100, unit="tokens"))
    assert steps == pytest.approx(tokens)


def test_constant_and_bad_names():
    assert curve(ScheduleConfig(name="constant", warmup=0))[-1] == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(ScheduleConfig(name="linear"), 0, 0, 10, 1)
    assert math.isfinite(lr_multiplier(ScheduleConfig(name="cosine", warmup=0), 0, 0, 1, 1))
