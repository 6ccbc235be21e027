"""Structure prediction from FASTA: ``python infer.py [FASTA ...] --params PATH --output-dir DIR``.

A thin entry point: the options, their checks and the run live in :mod:`jaxfold.predict_command`. Without
a FASTA argument it predicts the bundled example (``examples/1psm_A.fasta`` with its precomputed alignments
in ``examples/msas``). See ``python infer.py --help`` and ``examples/README.md``.
"""

import sys
import warnings

from jaxfold.predict_command import main

if __name__ == "__main__":
    # Warnings for the user (e.g. hhblits missing) as one plain line, not a source location.
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    sys.exit(main())
