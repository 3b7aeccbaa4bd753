"""ZeRO-3 builds models inside ``deepspeed.zero.Init``, which partitions each module's parameters
as soon as its constructor returns: every family must do all its init inside constructors, or the
partitioned model silently differs from the one a single process builds."""
import pytest
import torch

from recurlm.models import FAMILIES, build_model
from recurlm.models.registry import config_class
from recurlm.train.distributed import init_distributed


def built_families():
    names = []
    for family in sorted(FAMILIES):
        try:
            config_class(family)
        except ModuleNotFoundError:
            continue
        names.append(family)
    return names


@pytest.mark.parametrize("family", built_families())
def test_zero_init_builds_the_same_weights(family):
    import deepspeed

    init_distributed()
    cfg = {"family": family, "size": "tiny", "vocab_size": 101}
    torch.manual_seed(0)
    reference = build_model(cfg).state_dict()
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 1, "zero_optimization": {"stage": 3}}):
        partitioned = build_model(cfg)
    with deepspeed.zero.GatheredParameters(list(partitioned.parameters())):
        gathered = {k: v.detach().clone() for k, v in partitioned.state_dict().items()}
    assert gathered.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(gathered[k], reference[k])]
    assert not differ, f"initialised differently under zero.Init: {differ}"
