"""``python -m crossformers`` = the ``crossformers`` command (also what ``torchrun -m crossformers`` runs)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
