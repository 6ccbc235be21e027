"""Training: `python train.py --mesh DAPxDATA --config initial_training ...`.

Training lands with its own issue; until then this entry point says so instead of pretending to train.
"""

import sys


def main() -> int:
    print("train.py: not yet implemented — losses, data loader and train step are still being built.",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
