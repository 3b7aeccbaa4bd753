"""``python -m recurlm.train`` (and ``torchrun -m recurlm.train``) = ``recurlm-train``."""
import sys

from recurlm.train.cli import main

sys.exit(main())
