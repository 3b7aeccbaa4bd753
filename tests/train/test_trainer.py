"""One process, a tiny HGRN2 on a slice of the stdlib corpus: steps change the weights, metrics and
checkpoints are written, a resumed run continues exactly, and bad checkpoints are refused."""
import json
import os

import pytest
import torch

from recurlm.train import checkpoint as ckpt
from recurlm.train.trainer import Trainer, train


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_training_writes_metrics_config_checkpoint_and_changes_weights(tiny_job, tmp_path):
    job = tiny_job("train.steps=4", "train.checkpoint_every=2")
    trainer = Trainer(job)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.run()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before), set(before) - set(changed)

    records = read_metrics(result.run_dir)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm", "mfu"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 32
    assert [r["step"] for r in records if "val_loss" in r] == [0, 4]

    assert os.path.isfile(os.path.join(result.run_dir, "config.yaml"))
    assert os.path.isfile(os.path.join(result.run_dir, "eval", "4", "results.json"))  # eval.tasks at the end
    checkpoints = os.path.join(result.run_dir, "checkpoints")
    assert open(os.path.join(checkpoints, "latest")).read().strip() == "4"
    assert sorted(os.listdir(checkpoints)) == ["2", "4", "latest"]
    state = ckpt.read_state(os.path.join(checkpoints, "4"))
    assert state["step"] == 4 and state["loader"]["step"] == 4 and state["wandb_id"]
    wandb_runs = os.listdir(os.path.join(result.run_dir, "wandb"))
    assert any(r.startswith("offline-run") for r in wandb_runs)


def test_resume_continues_exactly(tiny_job, tmp_path):
    straight = train(tiny_job("train.steps=6", "train.checkpoint_every=3", run_dir=str(tmp_path / "a")))
    first = train(tiny_job("train.steps=6", "train.checkpoint_every=3", "train.exit_after_steps=3",
                           run_dir=str(tmp_path / "b")))
    assert first.step == 3
    resumed = train(tiny_job("train.steps=6", "train.checkpoint_every=3", "resume=auto", run_dir=str(tmp_path / "b")))
    assert resumed.step == 6
    a, b = train_losses(straight.run_dir), train_losses(resumed.run_dir)
    assert a == b  # bitwise: same data order, RNG, optimizer state
    ids = {json.load(open(os.path.join(d, "checkpoints", "6", "trainer_state.json")))["wandb_id"]
           for d in [resumed.run_dir]}
    assert ids == {ckpt.read_state(os.path.join(resumed.run_dir, "checkpoints", "3"))["wandb_id"]}


def test_checkpoint_of_another_model_is_refused(tiny_job, tmp_path):
    run = train(tiny_job("train.steps=1", run_dir=str(tmp_path / "r")))
    with pytest.raises(ckpt.CheckpointError, match="n_layers"):
        Trainer(tiny_job("train.steps=2", "model.n_layers=3", f"resume={run.checkpoint}",
                         run_dir=str(tmp_path / "other")))


def test_full_disk_during_save_keeps_the_previous_checkpoint(tiny_job, tmp_path, monkeypatch):
    trainer = Trainer(tiny_job("train.steps=2", "train.checkpoint_every=1", run_dir=str(tmp_path / "d")))
    trainer.step = 1
    good = trainer.save()
    original = trainer.engine.save_checkpoint

    def full_disk(*args, **kwargs):
        original(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.engine, "save_checkpoint", full_disk)
    trainer.step = 2
    assert trainer.save() is None
    assert trainer.checkpoints.latest() == good
    assert not any(n.startswith(".tmp") for n in os.listdir(trainer.checkpoints.root))
    assert ckpt.read_state(good)["step"] == 1


def test_export_gives_the_training_models_logits(tiny_job, tmp_path):
    from recurlm.train.convert import main as convert_main
    from recurlm.models.pretrained import load_for_inference

    trainer = Trainer(tiny_job("train.steps=2", run_dir=str(tmp_path / "e")))
    result = trainer.run()
    out = tmp_path / "export"
    assert convert_main(["export", result.run_dir, "--out", str(out)]) == 0
    model, tokenizer, info = load_for_inference(str(out))
    assert info["step"] == 2 and tokenizer is not None
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], trainer.model(ids)[0], rtol=0, atol=0)


def test_periodic_evaluation_during_training(tiny_job, tmp_path):
    result = train(tiny_job("train.steps=4", "eval.every=2", "eval.tasks=[ppl,ppl_by_position]",
                            "eval.length_multiple=2", run_dir=str(tmp_path / "periodic")))
    for step in ("2", "4"):
        with open(os.path.join(result.run_dir, "eval", step, "results.json")) as f:
            tasks = {r["task"] for r in json.load(f)["results"]}
        assert tasks == {"ppl", "ppl_by_position"}
