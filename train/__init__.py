"""recurlm.train: the DeepSpeed trainer (see trainer.py for one step from data to optimizer)."""
