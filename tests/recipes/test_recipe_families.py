"""Every length-generalisation recipe on every family (tiny, float32): finite losses and gradients
with the states the recipes inject, and noise that respects each family's state declarations."""
import pytest
import torch

from recurlm.models.registry import FAMILIES, build_model
from recurlm.models.state import entry_kind
from recurlm.train.recipe import RecipeConfig, build_recipe
from recurlm.train.state_noise import draw_state, fit_statistics

RECIPES = {"random_noise": "packed", "fitted_noise": "packed", "state_passing": "packed",
           "tbtt": "documents_in_order"}
VOCAB, ROWS, T = 97, 4, 16


def tiny(family):
    torch.manual_seed(0)
    return build_model({"family": family, "size": "tiny", "vocab_size": VOCAB})


def batch(step):
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, VOCAB, (ROWS, T + 1), generator=g)
    resets = torch.zeros(ROWS, T, dtype=torch.bool)
    resets[0, 0] = resets[1, 5] = True  # a row starting a document, one with a document inside
    return ids[:, :-1], ids[:, 1:], resets


def zero_state_finals(model):
    def finals(batches):
        for step in range(batches):
            ids, _, resets = batch(100 + step)
            with torch.no_grad():
                yield model(ids, resets=resets, return_state=True)[1]
    return finals


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_recipe_trains_every_family_with_finite_losses_and_gradients(family, recipe):
    model = tiny(family).train()
    runner = build_recipe(RecipeConfig(name=recipe, refit_every=2, fit_batches=1), RECIPES[recipe])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    injected = 0
    for step in range(3):
        runner.begin_step(step, model, zero_state_finals(model))
        ids, labels, resets = batch(step)
        state, resets = runner.initial_state(0, resets)
        injected += state is not None
        loss, final = model(ids, resets=resets, state=state, return_state=True, labels=labels)
        assert torch.isfinite(loss), (family, recipe, step, loss)
        optimizer.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (family, recipe, step, name)
        optimizer.step()
        runner.observe(0, final)
    assert injected == 2  # steps 2 and 3 started from the recipe's state


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_noise_respects_the_declared_kinds(family):
    """real entries come from the real state, positive ones stay positive, Titans' memory stays
    near its learnt initial value, and fitted noise reproduces the fitted statistics."""
    model = tiny(family).eval()
    kinds = model.state_kinds()
    ids, _, resets = batch(0)
    with torch.no_grad():
        _, real = model(ids, resets=resets, return_state=True)
        init = model.init_state(1)
    g = torch.Generator().manual_seed(0)
    drawn = draw_state(kinds, real, init, g, scale=1.0)
    finals = [model(batch(s)[0], return_state=True)[1] for s in range(3)]
    stats = fit_statistics(kinds, finals, init)
    fitted = draw_state(kinds, real.select(torch.zeros(64, dtype=torch.long)), init, g, stats=stats)
    for i, (layer, source) in enumerate(zip(drawn.layers, real.layers)):
        for key, t in (layer or {}).items():
            kind = entry_kind(kinds[i], key, source[key])
            if kind.noise == "real":
                assert torch.equal(t, source[key]), key
            elif kind.noise == "positive":
                assert (t > 0).all(), key
            elif kind.noise == "relative":
                reference = init.layers[i][key]
                spread = reference.std() if reference.abs().max() > 0 else torch.tensor(0.0)
                assert (t - reference).std() <= 2 * spread + 1e-6, key
            if kind.noise == "gaussian":
                mean, std = stats[f"{i}.{key}"]
                sample = fitted.layers[i][key].transpose(0, kind.head_dim).flatten(1) \
                    if kind.head_dim is not None else fitted.layers[i][key].flatten()[None]
                torch.testing.assert_close(sample.std(1), std.reshape(-1), rtol=0.25, atol=1e-6)
