"""recurlm: pretraining stack for large recurrent language models."""

__version__ = "0.1.0"
