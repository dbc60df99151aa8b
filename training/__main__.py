"""``python -m training train|eval ...`` — the same entry points as ``finehard train|eval``."""
import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
