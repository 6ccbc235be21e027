"""Throughput of many sequences with and without length buckets (compiles, total time).

    python -m bench.buckets --quick            # CPU smoke run: 4 sequences, tiny, 0 recycles (3 min, busy 2 cores)
    python -m bench.buckets                    # CPU: 50 sequences of 50-400 residues, tiny preset
    python -m bench.buckets --full             # GPU: same 50 sequences, full-size model_1_ptm, 3 recycles
    python -m bench.buckets --full --mode buckets --budget-s 480   # one mode per call, bounded

Sequences: 50 real PDB chains (AlphaFold3's subsampled PDB seqres, `../shared/data/seqdb/af3_miniature/`),
20 standard amino acids only, lengths spread evenly over 50-400 residues (the chain nearest to each of 50
evenly spaced target lengths). Single-sequence features (no MSA: the bench measures compiles and model
time, not alignment depth), processed once on the host before timing. Random parameters
(`jaxfold.model_params.init_random_params`): the predictions are meaningless, their cost is not.

Two modes, each over the records sorted by length (as a batch run would), with JAX's in-memory caches
cleared in between and no persistent compilation cache:
  exact    `run_alphafold` on each chain's own shape: one compile per distinct length.
  buckets  features padded to `jaxfold.data.buckets.bucket_length` (`pad_features`), outputs cut back
           (`unpad_outputs`): one compile per bucket. Each record's pLDDT and positions are compared with the
           exact-shape prediction when both modes ran (max |difference|: padding must be round-off).
A record whose shape is new pays its compilation; `compile_s` is that record's time minus the mean time of
the already-compiled records of similar length (an estimate; XLA compiles inside the first call).
`--budget-s` bounds each mode: records left when it runs out are reported as not run, never extrapolated.

Prints a table (device, preset, records, compiles, total, mean per record, records/min, ratio vs exact
measured in the same run) and writes `bench/results/buckets-<device>-<date>.json` with the commit, device,
jax version, peak device memory where the backend reports it, and one row per record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--quick" in sys.argv[1:]:
    # Smoke run: XLA's CPU backend optimisations off (as the test suite does) so compiles take seconds.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402  (after XLA_FLAGS)

from bench._common import commit  # noqa: E402  (after XLA_FLAGS)
from jaxfold.config import model_config  # noqa: E402  (after XLA_FLAGS)
from jaxfold.data import buckets  # noqa: E402  (after XLA_FLAGS)
from jaxfold.data.feature_processing import process_features  # noqa: E402  (after XLA_FLAGS)
from jaxfold.data.parsers import FastaRecord, read_fasta  # noqa: E402  (after XLA_FLAGS)
from jaxfold.data.pipeline import build_raw_features  # noqa: E402  (after XLA_FLAGS)
from jaxfold.model import run_alphafold  # noqa: E402  (after XLA_FLAGS)
from jaxfold.model.predict import clear_compiled  # noqa: E402  (after XLA_FLAGS)
from jaxfold.model_params import init_random_params  # noqa: E402  (after XLA_FLAGS)

STANDARD = set("ACDEFGHIKLMNPQRSTVWY")
SEQ_FILE = "data/seqdb/af3_miniature/pdb_seqres_2022_09_28__subsampled_1000.fasta"


def shared_dir() -> Path:
    return Path(os.environ.get("JAXFOLD_SHARED", ROOT.parent / "shared"))


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def pick_records(num: int, lo: int, hi: int) -> list[FastaRecord]:
    """`num` real PDB chains (standard residues only) nearest to `num` evenly spaced lengths in [lo, hi]."""
    pool = [
        r
        for r in read_fasta(shared_dir() / SEQ_FILE)
        if "mol:protein" in r.description and set(r.sequence) <= STANDARD and lo <= len(r.sequence) <= hi
    ]
    pool.sort(key=lambda r: (len(r.sequence), r.name))
    chosen, used = [], set()
    for target in np.linspace(lo, hi, num):
        best = min(
            (i for i in range(len(pool)) if i not in used), key=lambda i: (abs(len(pool[i].sequence) - target), i)
        )
        used.add(best)
        chosen.append(pool[best])
    return chosen


def run_mode(mode: str, cfg, params, feats: list[dict], names: list[str], budget_s: float) -> dict:
    jax.clear_caches()
    clear_compiled()
    order = sorted(range(len(feats)), key=lambda i: feats[i]["aatype"].shape[1])
    rows, shapes_seen, outputs = [], set(), {}
    start = time.perf_counter()
    for i in order:
        n = int(feats[i]["aatype"].shape[1])
        if time.perf_counter() - start > budget_s:
            rows.append({"name": names[i], "length": n, "run": False})
            continue
        length = buckets.bucket_length(n, "auto" if mode == "buckets" else "none")
        batch = buckets.pad_features(feats[i], length) if length != n else feats[i]
        t0 = time.perf_counter()
        out = run_alphafold(cfg, params, batch)
        if length != n:
            out = buckets.unpad_outputs(out, n)
        seconds = time.perf_counter() - t0
        new_shape = length not in shapes_seen
        shapes_seen.add(length)
        outputs[i] = {"plddt": out["confidence/plddt"], "positions": out["structure_module/final_atom_positions"]}
        rows.append(
            {
                "name": names[i],
                "length": n,
                "padded_length": length,
                "run": True,
                "compiled": new_shape,
                "seconds": seconds,
            }
        )
    total = time.perf_counter() - start
    done = [r for r in rows if r["run"]]
    steady = [r for r in done if not r["compiled"]]
    # Compile estimate: first-of-shape time minus the steady time of the nearest-length compiled-before record.
    for r in done:
        if r["compiled"]:
            near = min(steady, key=lambda s: abs(s["length"] - r["length"]), default=None)
            r["compile_s"] = max(r["seconds"] - (near["seconds"] if near else 0.0), 0.0)
    return {
        "mode": mode,
        "records": len(done),
        "not_run": len(rows) - len(done),
        "compiles": sum(r["compiled"] for r in done),
        "total_s": total,
        "compile_s_est": sum(r.get("compile_s", 0.0) for r in done),
        "steady_mean_s": float(np.mean([r["seconds"] for r in steady])) if steady else None,
        "residues": sum(r["length"] for r in done),
        "rows": rows,
        "_outputs": outputs,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 4 sequences of 40-72, tiny, 0 recycles")
    p.add_argument("--full", action="store_true", help="full-size model_1_ptm (GPU), 3 recycles")
    p.add_argument("--num-seqs", type=int, default=None)
    p.add_argument("--min-length", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--num-recycle", type=int, default=None)
    p.add_argument("--mode", choices=["both", "exact", "buckets"], default="both")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget per mode (default none)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    preset = "model_1_ptm" if args.full else "tiny"
    num = args.num_seqs or (4 if args.quick else 50)
    lo = args.min_length if args.min_length is not None else (40 if args.quick else 50)
    hi = args.max_length or (72 if args.quick else 400)
    recycle = args.num_recycle if args.num_recycle is not None else (0 if args.quick else 3 if args.full else 1)
    budget = args.budget_s if args.budget_s is not None else float("inf")
    cfg = model_config(preset, num_recycle=recycle)
    device = jax.devices()[0]
    print(
        f"device {device.device_kind} ({device.platform}), jax {jax.__version__}, preset {preset}, "
        f"num_recycle {recycle}, {num} sequences of {lo}-{hi} residues",
        flush=True,
    )

    records = pick_records(num, lo, hi)
    t0 = time.perf_counter()
    feats = [process_features(build_raw_features(r, msa_mode="single_sequence"), cfg, seed=0) for r in records]
    print(f"features: {time.perf_counter() - t0:.1f} s on the host", flush=True)
    params = jax.tree_util.tree_map(jax.numpy.asarray, init_random_params(cfg, seed=0))
    names = [r.name for r in records]

    modes = ["exact", "buckets"] if args.mode == "both" else [args.mode]
    results = {}
    for mode in modes:
        results[mode] = run_mode(mode, cfg, params, feats, names, budget)
        r = results[mode]
        print(f"  {mode}: {r['records']} records, {r['compiles']} compiles, {r['total_s']:.1f} s", flush=True)

    if len(results) == 2:
        ex, bu = results["exact"]["_outputs"], results["buckets"]["_outputs"]
        common = sorted(set(ex) & set(bu))
        results["buckets"]["max_abs_diff_vs_exact"] = {
            "plddt": max((float(np.max(np.abs(ex[i]["plddt"] - bu[i]["plddt"]))) for i in common), default=None),
            "positions_A": max(
                (float(np.max(np.abs(ex[i]["positions"] - bu[i]["positions"]))) for i in common), default=None
            ),
            "records_compared": len(common),
        }

    header = (
        f"{'mode':8} {'records':>8} {'compiles':>8} {'total s':>9} {'compile s (est)':>15} "
        f"{'steady s/rec':>12} {'rec/min':>8} {'res/s':>8} {'time vs exact':>13}"
    )
    print(
        f"\n{device.device_kind}, {preset}, num_recycle {recycle}, lengths "
        f"{min(len(r.sequence) for r in records)}-{max(len(r.sequence) for r in records)}"
    )
    print(header)
    for mode, r in results.items():
        ratio = ""
        if mode == "buckets" and "exact" in results and results["exact"]["not_run"] == 0 and r["not_run"] == 0:
            ratio = f"{r['total_s'] / results['exact']['total_s']:.2f}x"
        steady = f"{r['steady_mean_s']:.3f}" if r["steady_mean_s"] is not None else "-"
        print(
            f"{mode:8} {r['records']:>5}/{num:<2} {r['compiles']:>8} {r['total_s']:>9.1f} "
            f"{r['compile_s_est']:>15.1f} {steady:>12} {60 * r['records'] / r['total_s']:>8.2f} "
            f"{r['residues'] / r['total_s']:>8.1f} {ratio:>13}"
        )
    if "max_abs_diff_vs_exact" in results.get("buckets", {}):
        d = results["buckets"]["max_abs_diff_vs_exact"]
        print(
            f"buckets vs exact over {d['records_compared']} records: max |d pLDDT| {d['plddt']}, "
            f"max |d position| {d['positions_A']} Å"
        )

    for r in results.values():
        r.pop("_outputs")
    report = {
        "bench": "buckets",
        "commit": commit(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(),
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "host": platform.node(),
        "preset": preset,
        "num_recycle": recycle,
        "num_seqs": num,
        "lengths": [len(r.sequence) for r in records],
        "bucket_rule": buckets.BUCKET_RULE[:2],
        "budget_s_per_mode": args.budget_s,
        "peak_bytes_in_use": peak_bytes(),
        "modes": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = ("quick" if args.quick else "full" if args.full else "cpu-tiny") + (
        "" if args.mode == "both" else f"-{args.mode}"
    )
    path = args.out / (
        f"buckets-{tag}-{device.device_kind.replace(' ', '_')}-{_dt.date.today().strftime('%Y%m%d')}.json"
    )
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
