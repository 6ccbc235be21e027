"""Dynamic axial parallelism benchmark: Evoformer stack forward and full inference, 1 vs N GPUs.

    python -m bench.dap --n-res 1024 2048 --dap 1 2 [--kernels auto xla] [--blocks 48] [--dtype bfloat16] [--quick]

For each N_res, kernel choice and DAP size: wall time (median of repeats after a compile/warm-up run),
speedup and parallel efficiency against DAP 1 with the same kernels, the speedup of these kernels over
`xla` at the same DAP size (when `xla` is in `--kernels`), all measured in the same run, and peak device
memory per GPU (the compiled executable's memory analysis, and the allocator's peak where the backend
reports it). `--kernels auto` (default) is what a prediction uses: the fused Pallas kernels on a GPU, under
DAP too (`pallas_kernels/_vma.py`), XLA on a CPU. Prints a table and writes
`bench/results/dap-<device>-<UTC stamp>.json` with the commit and device.

Prediction (full-size Evoformer block, N_seq 128, c_z 128, 4 heads x 32): the triangle updates cost
2 x 2 N^3 c_z and the triangle attentions 2 x 2 x 2 N^3 (H c) FLOPs, ~13 TFLOP per block at N 2,048 and
~1.6 TFLOP at N 1,024: 48 blocks = ~630 / ~80 TFLOP, i.e. ~2-3 s / ~0.3 s per stack forward in bf16 at
300 TFLOP/s achieved on an H200. DAP 2 halves the per-GPU FLOPs and the pair/MSA activations; the
all-to-alls move 4 pair slices (N^2 c_z / d bytes each) per block.
"""

from __future__ import annotations

import argparse
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from bench._common import RESULTS, device_kind, median, peak_bytes, print_header, record, timed, write_results
from jaxfold.config import model_config
from jaxfold.model.evoformer import evoformer_stack
from jaxfold.model.init import dummy_features, init_params
from jaxfold.model.kernels import KERNELS, resolve_kernels
from jaxfold.model.predict import predict
from jaxfold.model.stacks import apply_stack
from jaxfold.parallel.dap import NO_DAP
from jaxfold.parallel.mesh import dap_for_mesh, make_mesh


class EvoformerStackOnly(nn.Module):
    config: object
    dap: object

    @nn.compact
    def __call__(self, msa, pair, msa_mask, pair_mask):
        c = self.config.model.embeddings_and_evoformer
        stack = evoformer_stack(
            c.evoformer,
            self.config.model.global_config,
            c.evoformer_num_block,
            False,
            False,
            name="evoformer_iteration",
            dap=self.dap,
        )
        return apply_stack(stack, self.dap, msa, pair, msa_mask, pair_mask)


def stack_case(cfg, n_res, n_seq, dap_size, dtype, repeats):
    devices = jax.devices()[:dap_size]
    mesh = make_mesh(f"{dap_size}x1", devices) if dap_size > 1 else None
    module = EvoformerStackOnly(cfg, dap_for_mesh(mesh))
    emb = cfg.model.embeddings_and_evoformer
    key = jax.random.PRNGKey(0)
    msa = jax.random.normal(key, (n_seq, n_res, emb.msa_channel), dtype)
    pair = jax.random.normal(key, (n_res, n_res, emb.pair_channel), dtype)
    msa_mask = jnp.ones((n_seq, n_res), dtype)
    pair_mask = jnp.ones((n_res, n_res), dtype)
    # Parameters do not depend on the DAP layout: initialise unsharded, outside shard_map.
    params = jax.jit(EvoformerStackOnly(cfg, NO_DAP).init)(
        key, msa[:, :8], pair[:8, :8], msa_mask[:, :8], pair_mask[:8, :8]
    )

    def forward(p, msa, pair):
        return module.apply(p, msa, pair, msa_mask, pair_mask)

    if mesh is not None:
        forward = jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())
    fn = jax.jit(forward)
    mem = fn.lower(params, msa, pair).compile().memory_analysis()
    first, times = timed(fn, params, msa, pair, repeats=repeats)
    return {
        "what": "evoformer_stack_forward",
        "n_res": n_res,
        "n_seq": n_seq,
        "dap": dap_size,
        "blocks": emb.evoformer_num_block,
        "dtype": str(jnp.dtype(dtype)),
        "compile_and_first_s": first,
        "median_s": median(times),
        "times_s": times,
        "temp_bytes_per_device": getattr(mem, "temp_size_in_bytes", None),
        "peak_bytes_per_device": peak_bytes(devices),
    }


def inference_case(cfg, n_res, n_seq, n_extra, dap_size, repeats):
    """The whole prediction through the one prediction path (`jaxfold.model.predict.predict`)."""
    devices = jax.devices()[:dap_size]
    mesh = make_mesh(f"{dap_size}x1", devices) if dap_size > 1 else None
    params = init_params(cfg, jax.random.PRNGKey(0))
    features = dummy_features(
        cfg, num_res=n_res, num_seq=n_seq, num_extra=n_extra, num_templates=4, num_iterations=cfg.model.num_recycle + 1
    )
    rng = np.random.default_rng(0)
    features["target_feat"][..., :] = rng.random(features["target_feat"].shape) < 0.05
    features["msa_feat"][...] = rng.random(features["msa_feat"].shape) < 0.05

    def run():
        return predict(cfg, params, features, mesh=mesh, outputs="lean")

    first, times = timed(run, repeats=repeats)
    return {
        "what": "full_inference",
        "n_res": n_res,
        "n_seq": n_seq,
        "n_extra": n_extra,
        "dap": dap_size,
        "num_recycle": cfg.model.num_recycle,
        "dtype": cfg.model.global_config.dtype,
        "compile_and_first_s": first,
        "median_s": median(times),
        "times_s": times,
        "peak_bytes_per_device": peak_bytes(devices),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-res", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--dap", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-seq", type=int, default=128)
    parser.add_argument("--n-extra", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=["auto"],
        choices=KERNELS,
        help="auto (default): fused Pallas kernels on a GPU, XLA on a CPU; give 'auto xla' to compare both",
    )
    parser.add_argument("--chunk-size", type=int, default=0, help="rows per chunk (0 = choose by N_res)")
    parser.add_argument("--num-recycle", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (tiny preset, small N)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    preset = "tiny" if args.quick else "model_1_ptm"
    if args.quick:
        args.n_res, args.n_seq, args.n_extra, args.repeats = [24], 8, 16, 1
    dap_sizes = [d for d in args.dap if d <= len(jax.devices())]
    skipped = sorted(set(args.dap) - set(dap_sizes))
    device = device_kind()
    rows = []
    for n_res in args.n_res:
        chunk = args.chunk_size or (0 if n_res <= 512 else max(16, 2**17 // n_res))
        for kernels in args.kernels:
            overrides = dict(dtype=args.dtype, chunk_size=chunk, num_recycle=args.num_recycle, kernels=kernels)
            if not args.quick:
                overrides["evoformer_num_block"] = args.blocks
            cfg = model_config(preset, **overrides)
            for dap_size in dap_sizes:
                for case in ("stack", "inference"):
                    if case == "inference" and args.skip_inference:
                        continue
                    try:
                        if case == "stack":
                            row = stack_case(cfg, n_res, args.n_seq, dap_size, jnp.dtype(args.dtype), args.repeats)
                        else:
                            row = inference_case(cfg, n_res, args.n_seq, args.n_extra, dap_size, args.repeats)
                    except Exception as err:  # noqa: BLE001  (one failing case must not lose the others)
                        row = {
                            "what": case,
                            "n_res": n_res,
                            "dap": dap_size,
                            "error": f"{type(err).__name__}: {err}"[:500],
                        }
                    # The choice asked for and what it resolved to here ("auto": pallas on a GPU).
                    row.update(kernels=kernels, kernels_resolved=resolve_kernels(kernels), chunk_size=chunk)
                    record(rows, row, hide=("times_s",))

    timed_rows = [r for r in rows if "median_s" in r]
    base = {(r["what"], r["n_res"], r["kernels"]): r["median_s"] for r in timed_rows if r["dap"] == 1}
    xla = {(r["what"], r["n_res"], r["dap"]): r["median_s"] for r in timed_rows if r["kernels"] == "xla"}
    print_header(
        f"DAP benchmark on {len(jax.devices())} x {device} ({preset}, {args.dtype}, N_seq {args.n_seq})",
        f"{'what':<24}{'N_res':>6}{'kernels':>16}{'dap':>4}{'time s':>10}{'speedup':>9}{'effic.':>8}"
        f"{'vs xla':>8}{'peak GiB/GPU':>14}",
    )
    for r in rows:
        label = f"{r['kernels']}->{r['kernels_resolved']}" if r["kernels"] == "auto" else r["kernels"]
        if "median_s" not in r:
            print(f"{r['what']:<24}{r['n_res']:>6}{label:>16}{r['dap']:>4}  {r['error'][:80]}")
            continue
        ref = base.get((r["what"], r["n_res"], r["kernels"]))
        speedup = ref / r["median_s"] if ref else float("nan")
        r["speedup_vs_dap1"] = speedup
        r["parallel_efficiency"] = speedup / r["dap"] if ref else float("nan")
        ref_xla = xla.get((r["what"], r["n_res"], r["dap"]))
        r["speedup_vs_xla"] = ref_xla / r["median_s"] if ref_xla else float("nan")
        peak = r.get("peak_bytes_per_device") or r.get("temp_bytes_per_device")
        print(
            f"{r['what']:<24}{r['n_res']:>6}{label:>16}{r['dap']:>4}{r['median_s']:>10.3f}{speedup:>9.2f}"
            f"{r['parallel_efficiency']:>8.2f}{r['speedup_vs_xla']:>8.2f}{(peak or 0) / 2**30:>14.2f}"
        )
    if skipped:
        print(f"(not run: dap {skipped} — only {len(jax.devices())} device(s) here)")
    write_results(
        args.out,
        "dap",
        {
            "device": device,
            "num_devices": len(jax.devices()),
            "preset": preset,
            "args": vars(args),
            "rows": rows,
            "not_run_dap_sizes": skipped,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
