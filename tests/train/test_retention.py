"""Checkpoint retention (keep-last-k, keep-every-n) and the ``latest`` pointer, with a stand-in
engine that writes the files DeepSpeed would."""
import os

from recurlm.train import checkpoint as ckpt


class FakeEngine:
    def save_checkpoint(self, save_dir, tag, save_latest, client_state):
        os.makedirs(os.path.join(save_dir, tag))
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "w") as f:
            f.write("weights")


def test_keep_last_and_keep_every(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_last=2, keep_every=4)
    for step in range(1, 11):
        manager.save(FakeEngine(), step, {"step": step}, "config: {}")
    assert manager.published_steps() == [4, 8, 9, 10]
    assert manager.latest().endswith("/10")
    assert (tmp_path / "latest").read_text() == "10"


def test_latest_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), keep_last=5)
    for step in (1, 2):
        manager.save(FakeEngine(), step, {"step": step}, "")
    (tmp_path / "latest").write_text("7")  # names a checkpoint that never got published
    assert manager.latest().endswith("/2")
    os.remove(tmp_path / "2" / ckpt.STATE_FILE)  # a damaged one is skipped
    assert manager.latest().endswith("/1")
