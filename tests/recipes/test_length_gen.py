"""Length-generalisation recipes through the real trainer: which initial state each micro-batch
gets, which resets it runs with, that a resumed run continues them exactly, and that post-training
starts from the given weights."""
import json
import os
import shutil

import pytest
import torch

from recurlm.configs import compose
from recurlm.train.convert import main as convert_main
from recurlm.configs import ConfigError
from recurlm.train.recipe import StatePassing, build_recipe, RecipeConfig
from recurlm.train.trainer import Trainer, train


def assert_state_equal(a, b):
    assert [sorted(layer) for layer in a.layers] == [sorted(layer) for layer in b.layers]
    for la, lb in zip(a.layers, b.layers):
        for key in la:
            torch.testing.assert_close(la[key], lb[key], rtol=0, atol=0)


@pytest.mark.parametrize("option, name", [("none", "none"), ("length_gen/tbtt", "tbtt"),
                                          ("length_gen/state_passing", "state_passing"),
                                          ("length_gen/random_noise", "random_noise"),
                                          ("length_gen/fitted_noise", "fitted_noise"),
                                          ("state_expansion", "state_expansion")])
def test_recipe_options_compose(option, name):
    job = compose([f"recipe={option}"])
    assert job.recipe.name == name
    assert job.data.loader_mode == ("documents_in_order" if name == "tbtt" else "packed")


@pytest.mark.parametrize("override, successor", [("recipe=length_gen/noise_init", "length_gen/random_noise"),
                                                 ("recipe=length_gen/other_sequence_init", "length_gen/state_passing"),
                                                 ("recipe.name=noise_init", "length_gen/random_noise")])
def test_retired_names_fail_naming_their_successors(override, successor):
    with pytest.raises(ConfigError, match=successor):
        compose([override])
    with pytest.raises(ValueError, match=successor):
        build_recipe(RecipeConfig(name=override.rsplit("/", 1)[-1].split("=")[-1]), "packed")


def test_tbtt_needs_documents_in_order_and_state_passing_refuses_its_old_meaning():
    with pytest.raises(ValueError, match="documents_in_order"):
        build_recipe(RecipeConfig(name="tbtt"), "packed")
    # the old state_passing config (documents in order) would silently become SP: it names tbtt instead
    with pytest.raises(ValueError, match="length_gen/tbtt"):
        build_recipe(RecipeConfig(name="state_passing"), "documents_in_order")


def test_tbtt_carries_each_rows_state_to_its_continuation(tiny_job, record):
    # 4 rows in 2 micro-batches: micro-batch i of step 2 continues micro-batch i of step 1
    trainer = Trainer(tiny_job("recipe=length_gen/tbtt", "train.micro_batch_size=2", "train.steps=3"))
    calls, batches = record(trainer, 3)
    assert len(calls) == 6 and calls[0]["state"] is None and calls[1]["state"] is None
    for step in (1, 2):
        for micro in (0, 1):
            call, before = calls[2 * step + micro], calls[2 * (step - 1) + micro]
            assert_state_equal(call["state"], before["final"].detach())
            assert all(not t.requires_grad for layer in call["state"].layers for t in layer.values())
            # resets untouched: a row starting a document still drops the carried state
            torch.testing.assert_close(call["resets"], batches[step].resets[2 * micro:2 * micro + 2])
    # the loader gave continuations: no row of step 2 starts at a new lane
    assert batches[1].input_ids[:, 0].tolist() == [int(t) for t in batches[0].labels[:, -1]]


def test_random_noise_draws_content_and_keeps_real_entries(tiny_job, record):
    trainer = Trainer(tiny_job("model=griffin", "recipe=length_gen/random_noise", "recipe.noise_scale=0.5",
                               "train.steps=2"))
    calls, _ = record(trainer, 2)
    assert calls[0]["state"] is None
    state, previous = calls[1]["state"], calls[0]["final"]
    assert not calls[1]["resets"][:, 0].any()  # the injected state is used at the first token
    content = []
    for layer, prev in zip(state.layers, previous.layers):
        for key, t in layer.items():
            if key.startswith("_") or key in ("conv", "k", "v"):
                assert torch.equal(t, prev[key])  # positions, cache validity, conv buffer, KV cache: real
            else:
                content.append(t.flatten())
    content = torch.cat(content)
    assert content.numel() == 512 and abs(content.std().item() - 0.5) < 0.05 and abs(content.mean().item()) < 0.06  # h only


def test_noise_reaches_rows_that_start_a_document(tiny_job, record):
    """The recipe clears resets[:, 0]; with the loader's resets a row starting a document would
    discard the noise at its first token."""
    trainer = Trainer(tiny_job("recipe=length_gen/random_noise", "recipe.noise_scale=3.0", "train.steps=2"))
    calls, batches = record(trainer, 2)
    ids, state = batches[1].input_ids, calls[1]["state"]
    starts = torch.ones_like(batches[1].resets)  # every token a document start: no state survives
    trainer.model.eval()
    with torch.no_grad():
        plain, _ = trainer.model(ids, resets=starts)
        discarded, _ = trainer.model(ids, resets=starts, state=state)
        starts[:, 0] = False
        used, _ = trainer.model(ids, resets=starts, state=state)
    torch.testing.assert_close(discarded, plain, rtol=0, atol=0)
    assert (used[:, 0] - plain[:, 0]).abs().amax(-1).min() > 1e-3  # every row saw its noise
    torch.testing.assert_close(used[:, 1:], plain[:, 1:], rtol=0, atol=1e-5)  # cut at token 1


def test_state_passing_uses_another_rows_final_state(tiny_job, record):
    trainer = Trainer(tiny_job("recipe=length_gen/state_passing", "train.steps=3"))
    calls, _ = record(trainer, 3)
    assert calls[0]["state"] is None
    for step in (1, 2):
        state, previous = calls[step]["state"].layers[0]["S"], calls[step - 1]["final"].layers[0]["S"]
        sources = [[j for j in range(4) if torch.equal(state[i], previous[j])] for i in range(4)]
        assert all(len(s) == 1 for s in sources), sources
        sources = [s[0] for s in sources]
        assert sorted(sources) == [0, 1, 2, 3] and all(s != i for i, s in enumerate(sources))
        assert not calls[step]["resets"][:, 0].any()


def test_state_passing_permutations_differ_between_steps():
    recipe = StatePassing(seed=0, rank=0)
    from recurlm.models.state import ModelState

    final = ModelState([{"S": torch.arange(8.0)[:, None]}])
    recipe.observe(0, final)
    draws = {tuple(recipe.initial_state(0, torch.ones(8, 3, dtype=torch.bool))[0].layers[0]["S"].flatten().tolist())
             for _ in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize("source", ["run", "export"])
def test_post_training_starts_from_init_from_weights(tiny_job, tmp_path, source):
    base = train(tiny_job("train.steps=2", run_dir=str(tmp_path / "base")))
    path = base.run_dir
    if source == "export":
        path = str(tmp_path / "export")
        assert convert_main(["export", base.run_dir, "--out", path]) == 0
    trained = Trainer(tiny_job("train.steps=2", f"resume={base.checkpoint}", run_dir=str(tmp_path / "probe")))
    post = Trainer(tiny_job("recipe=length_gen/state_passing", f"recipe.init_from={path}", "train.steps=2",
                            run_dir=str(tmp_path / "post")))
    assert post.step == 0  # fresh optimizer, schedule and data position
    for (name, p), (_, q) in zip(post.model.named_parameters(), trained.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    result = post.run()
    assert result.step == 2


def test_init_from_survives_zero1_master_weights(tiny_job, tmp_path):
    """ZeRO keeps fp32 master copies apart from the module: with lr 0 one step must keep the loaded
    weights (without refreshing the masters it would write the fresh init back)."""
    base = train(tiny_job("train.steps=1", run_dir=str(tmp_path / "base")))
    post = Trainer(tiny_job("deepspeed=zero1", f"recipe.init_from={base.run_dir}", "optim.lr=0",
                            "train.steps=1", run_dir=str(tmp_path / "post")))
    loaded = {n: p.detach().clone() for n, p in post.model.named_parameters()}
    post.train_step()
    for name, p in post.model.named_parameters():
        torch.testing.assert_close(p.detach(), loaded[name], rtol=0, atol=0, msg=name)


def train_losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.parametrize("recipe", ["length_gen/tbtt", "length_gen/random_noise", "length_gen/fitted_noise"])
def test_resume_continues_the_carried_states_exactly(tiny_job, tmp_path, recipe):
    """Stopped after step 3 and resumed == uninterrupted: the carried states (and the noise
    generator) of every micro-batch are saved with the checkpoint; without them step 4 differs."""
    job = (f"recipe={recipe}", "train.micro_batch_size=2", "train.steps=5", "train.checkpoint_every=3",
           "recipe.refit_every=2", "recipe.fit_batches=1")
    straight = train(tiny_job(*job, run_dir=str(tmp_path / "a")))
    first = train(tiny_job(*job, "train.exit_after_steps=3", run_dir=str(tmp_path / "b")))
    assert first.step == 3
    saved = torch.load(os.path.join(first.checkpoint, "recipe", "rank0.pt"), weights_only=True)
    assert sorted(saved["states"]) == [0, 1]
    shutil.copytree(first.run_dir, str(tmp_path / "c"))
    resumed = train(tiny_job(*job, "resume=auto", run_dir=str(tmp_path / "b")))
    assert resumed.step == 5
    a, b = train_losses(straight.run_dir), train_losses(resumed.run_dir)
    assert a == b  # bitwise
    # the same resume without the carried states starts step 4 from zeros: a different loss
    shutil.rmtree(os.path.join(str(tmp_path / "c"), "checkpoints", "3", "recipe"))
    amnesic = train(tiny_job(*job, "resume=auto", "train.steps=4", run_dir=str(tmp_path / "c")))
    assert train_losses(amnesic.run_dir)[4] != a[4]


def test_resume_restores_and_rollback_drops_the_carried_states(tiny_job, tmp_path):
    trainer = Trainer(tiny_job("recipe=length_gen/tbtt", "train.steps=2", run_dir=str(tmp_path / "r")))
    trainer.train_step()
    trainer.step = 1
    path = trainer.save()
    carried = trainer.recipe.states[0]
    trainer.train_step()
    trainer._restore(path)  # a resume: the states saved with the checkpoint
    assert_state_equal(trainer.recipe.states[0], carried)
    trainer._restore(path, keep_loader_position=True)  # a rollback skips data: nothing to continue
    assert trainer.recipe.states == {}
