"""Structure prediction from FASTA: `python infer.py [FASTA ...] --params PATH --output-dir DIR`.

The data pipeline and the writers land with the inference issue; until then this entry point says so
instead of pretending to predict anything.
"""

import sys


def main() -> int:
    print("infer.py: not yet implemented — the FASTA-to-structure pipeline is still being built.\n"
          "Available today: the AlphaFold2 trunk in `jaxfold.model` (see README.md).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
