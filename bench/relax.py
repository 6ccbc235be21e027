"""Amber relaxation time on CPU and on the GPU (OpenMM's CUDA platform), on real deposited structures.

    python -m bench.relax            # every structure on 'cpu' and, where OpenMM has it, 'cuda'
    python -m bench.relax --quick    # ubiquitin on 'cpu' only (seconds)

Structures (../shared/data/structures, complete chains: relaxation refuses chain breaks): 1ubq (76
residues), 1aki (129), 1dix (208). Each is relaxed as deposited, with AlphaFold's settings
(`jaxfold.relax.relax_structure` defaults). The first call of each device also pays OpenMM's kernel
compilation (CUDA) and JAX's import of the violation checks, so every case runs twice and the second
time is the one in the table (`first_s` is kept in the JSON).

Prints a table (structure, residues, device, time, minimiser iterations, RMSD, violations before/after,
cuda/cpu time ratio measured in the same run) and writes `bench/results/relax-<device>-<date>.json` with
the commit and device.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench._common import commit
from jaxfold.common import protein
from jaxfold.relax import relax_structure

ROOT = Path(__file__).resolve().parents[1]

CASES = [("1ubq", "pdb/1ubq.pdb"), ("1aki", "mmcif/1aki.cif"), ("1dix", "mmcif/1dix.cif")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    import openmm  # noqa: PLC0415

    platforms = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    devices = ["cpu"] + (["cuda"] if "CUDA" in platforms and not args.quick else [])
    cases = CASES[:1] if args.quick else CASES
    shared = Path(os.environ.get("JAXFOLD_SHARED", ROOT.parent / "shared"))
    gpu = ""
    try:
        gpu = (
            subprocess.check_output(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True, stderr=subprocess.DEVNULL
            )
            .splitlines()[0]
            .strip()
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    print(f"openmm {openmm.__version__}, platforms {platforms}, CPU cores {os.cpu_count()}, GPU {gpu or 'none'}")
    rows = []
    for name, path in cases:
        prot = protein.from_file(shared / "data/structures" / path, chain_id="A")
        for device in devices:
            first = relax_structure(prot, device=device).stats["time_s"]
            stats = relax_structure(prot, device=device).stats
            rows.append({"structure": name, "residues": prot.num_res, "device": device, "first_s": first, **stats})
    print(
        f"\n{'structure':9} {'res':>4} {'device':6} {'time s':>7} {'iters':>6} {'rmsd Å':>7} "
        f"{'viol before/after':>17} {'cuda/cpu':>8}"
    )
    for r in rows:
        ratio = ""
        if r["device"] == "cuda":
            cpu = next(c for c in rows if c["structure"] == r["structure"] and c["device"] == "cpu")
            ratio = f"{r['time_s'] / cpu['time_s']:.2f}x"
        print(
            f"{r['structure']:9} {r['residues']:>4} {r['device']:6} {r['time_s']:>7.2f} "
            f"{r['minimiser_iterations']:>6} {r['rmsd']:>7.3f} "
            f"{r['violating_residues_before']:>8}/{r['violating_residues_after']:<8} {ratio:>8}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    tag = gpu.replace(" ", "_") if gpu and "cuda" in devices else "cpu"
    path = args.out / f"relax-{tag}-{_dt.date.today().strftime('%Y%m%d')}.json"
    path.write_text(
        json.dumps(
            {
                "bench": "relax",
                "commit": commit(),
                "host": platform.node(),
                "gpu": gpu,
                "openmm": openmm.__version__,
                "platforms": platforms,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
