"""``python -m recurlm.train`` (and ``torchrun -m recurlm.train``) = ``recurlm-train``.

An entry point, never imported: it may use the root ``recurlm.cli`` above the train package."""
import sys

from recurlm.cli import train_main

sys.exit(train_main())
