"""The whole model on an accelerator against DeepMind's reference outputs, with XLA and with Pallas kernels.

    python -m bench.reference_on_gpu --reference DIR   # DIR holds params/…shrunk.npz, features.npz, outputs*.npz

CI has no GPU, so this is where the GPU numerics are checked: for `kernels` in (xla, pallas) and precision in
(highest fp32, default (TF32 on GPU), bf16 activations) it runs `run_alphafold` on the reference features and
prints the max abs error per output family against `outputs.npz`, next to the README's fp32 tolerance, plus
the steady-state run time. Writes `bench/results/reference-<device>-<UTC stamp>.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from bench._common import RESULTS, device_kind, record, timed, write_results
from jaxfold.config import model_config
from jaxfold.model import run_alphafold
from jaxfold.weights import load_alphafold_params

SHRINK = dict(evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2, num_recycle=1)
FAMILIES = {  # output family -> (key prefixes, fp32 atol from shared/reference/README.md)
    "representations": (("representations/",), 1e-4),
    "logits": (
        (
            "distogram/logits",
            "masked_msa/logits",
            "predicted_lddt/logits",
            "predicted_aligned_error/logits",
            "experimentally_resolved/logits",
        ),
        1e-4,
    ),
    "final_atom_positions": (("structure_module/final_atom_positions", "structure_module/traj"), 1e-3),
    "sidechain_sin_cos": (("structure_module/sidechains/angles_sin_cos",), 5e-4),
    "plddt_pae": (("confidence/plddt", "confidence/predicted_aligned_error"), 1e-3),
    "ptm": (("confidence/ptm",), 1e-5),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    ref_dir = args.reference
    with np.load(ref_dir / "features.npz") as f:
        features = {k: f[k] for k in f.files}
    with np.load(ref_dir / "outputs.npz") as o:
        expected = {k: o[k] for k in o.files}
    device = device_kind()
    rows = []
    for kernels in ("xla", "pallas"):
        for precision, dtype in (("highest", "float32"), ("default", "float32"), ("default", "bfloat16")):
            cfg = model_config("model_1_ptm", **SHRINK, kernels=kernels, dtype=dtype)
            row = {"kernels": kernels, "matmul_precision": precision, "dtype": dtype}
            try:
                params = load_alphafold_params(ref_dir / "params" / "params_model_1_ptm_shrunk.npz", cfg)
                with jax.default_matmul_precision(precision):
                    outs = []  # keeps the first run's outputs for the comparison below

                    def run(cfg=cfg, params=params, outs=outs):
                        outs.append(run_alphafold(cfg, params, features))
                        return outs[-1]

                    row["first_run_s"], (row["run_s"],) = timed(run, repeats=1)
                    out = outs[0]
                for family, (prefixes, atol) in FAMILIES.items():
                    keys = [k for k in expected if k.startswith(prefixes)]
                    err = max(float(np.max(np.abs(np.asarray(out[k], np.float64) - expected[k]))) for k in keys)
                    row[family] = err
                    row[f"{family}_within_fp32_tol"] = err <= atol + 1e-4 * max(
                        float(np.max(np.abs(expected[k]))) for k in keys
                    )
            except Exception as err:  # noqa: BLE001  (report, keep going)
                row["error"] = f"{type(err).__name__}: {err}"[:600]
            record(rows, row)
    print(f"\nDeepMind reference (model_1_ptm shrunk, N_res 37, 1 recycle) on {device}: max abs error")
    header = (
        f"{'kernels':<8}{'precision':<10}{'dtype':<10}" + "".join(f"{f[:14]:>16}" for f in FAMILIES) + f"{'run s':>8}"
    )
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['kernels']:<8}{r['matmul_precision']:<10}{r['dtype']:<10}{r['error'][:100]}")
            continue
        cells = "".join(f"{r[f]:>15.2e}{'' if r[f + '_within_fp32_tol'] else '*'}" for f in FAMILIES)
        print(f"{r['kernels']:<8}{r['matmul_precision']:<10}{r['dtype']:<10}{cells}{r['run_s']:>8.3f}")
    print("(* = outside the fp32 tolerance, expected for TF32/bf16 runs)")
    tol = {f: atol for f, (_, atol) in FAMILIES.items()}
    write_results(args.out, "reference", {"device": device, "fp32_tolerances": tol, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
