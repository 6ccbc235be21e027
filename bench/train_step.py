"""One AlphaFold2 training step, full size, on one accelerator: compile time, step time, peak memory.

    python -m bench.train_step --data-dir MMCIF_DIR --alignment-dir ALN_DIR [--chain 1k1a_A]
                               [--config initial_training] [--kernels xla pallas] [--recycles 0 3]

The example is a real chain prepared by `jaxfold.data.dataset.TrainingDataset` exactly as in training
(crop, MSA clustering to `max_msa_clusters`, `max_extra_msa` extra sequences, `max_templates` template
slots, masked-MSA corruption, ground truth for every loss); the step is `jaxfold.train.step.make_train_step`
with `jaxfold.losses.total_loss`: forward, `nn.remat` recomputation, backward, global-norm clipping, Adam,
EMA. Per-device batch 1 (AlphaFold's batch 128 is 128 devices x 1). Each `--kernels` variant runs in its
own process so that its peak memory is its own.

Recycling: AlphaFold draws 0..3 recycling iterations per step (no gradient through the extra passes), so
the step time is reported per fixed count and as the expectation over the uniform draw.

Prediction (written before measuring), initial_training at crop 256, 128 clusters, 1024 extra, 4 templates:
one Evoformer block is ~0.21 TFLOP forward (MSA row/col attention 30+26 GF, MSA transition 34, outer
product mean 35, two triangle multiplications 34, two triangle attentions 38, pair transition 17), 48
blocks ~10.3 TF; the extra-MSA stack ~1.2 TF (its outer product mean over 1024 rows alone is 0.15 TF per
block); templates and structure module ~0.3 TF: ~11.8 TF forward. A step with 0 recycles is forward +
remat forward + backward (2x) ~ 4 x 11.8 = 47 TF; each recycle adds a no-gradient forward (11.8 TF), so the
mean over 0..3 is ~65 TF. At a realistic 30% of the H200's ~790 TF/s bf16 dense peak this is ~0.2 s at 0
recycles and ~0.27 s on average; the issue's target is < 0.6 s.

Remat sweep: `--remat-policies nothing dots dots_no_batch offload_dots` runs every kernels variant under
each `model.global_config.remat_policy` (what a rematerialised block saves for its backward; see
`jaxfold.model.evoformer.REMAT_POLICIES`), one process each, and names the fastest policy whose peak stays
under `--headroom` (default 0.8) of the device's memory: the candidate default for the training presets.

Prints a table and writes `bench/results/train-step-<device>-<UTC stamp>.json` (commit, device, jax
version).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from bench._common import device_kind, device_limit_bytes, last_json_line, peak_bytes, record, run_module, write_results

# Expected forward TFLOP of the configs measured here (see the module docstring), for achieved TFLOP/s.
FORWARD_TFLOP_ESTIMATE = {"initial_training": 11.8}


def run_variant(args) -> dict:
    """Measure one kernels variant in this process; returns a JSON-able row."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from jaxfold.config import (
        model_config,  # noqa: PLC0415
        parse_overrides,  # noqa: PLC0415
    )
    from jaxfold.data.dataset import TrainingDataset  # noqa: PLC0415
    from jaxfold.losses import total_loss  # noqa: PLC0415
    from jaxfold.model.init import init_params  # noqa: PLC0415
    from jaxfold.train.optimizer import make_optimizer  # noqa: PLC0415
    from jaxfold.train.state import TrainState  # noqa: PLC0415
    from jaxfold.train.step import device_batch, loss_fn_from_config, make_train_step, shard_batch, stack_examples  # noqa: PLC0415

    row: dict = {"kernels": args.kernels, "config": args.config}
    overrides = parse_overrides(args.set)
    if args.remat_policy:
        overrides["model.global_config.remat_policy"] = args.remat_policy
    cfg = model_config(args.config, kernels=args.kernels, **{"training.batch_size": 1}, **overrides)
    row["remat_policy"] = str(cfg.model.global_config.remat_policy)
    evo = cfg.model.embeddings_and_evoformer
    row["shapes"] = {
        "crop": int(cfg.data.train.crop_size),
        "msa_clusters": int(cfg.data.train.max_msa_clusters),
        "extra_msa": int(cfg.data.train.max_extra_msa),
        "templates": int(cfg.data.train.max_templates) if cfg.data.common.use_templates else 0,
        "evoformer_blocks": int(evo.evoformer_num_block),
        "extra_msa_blocks": int(evo.extra_msa_stack_num_block),
        "dtype": str(cfg.model.global_config.dtype),
        "remat": bool(cfg.model.global_config.use_remat),
    }
    lst = Path(args.scratch) / "chain.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text(args.chain + "\n")
    ds = TrainingDataset(args.data_dir, args.alignment_dir, cfg, chain_list=lst, seed=0)
    example = ds.sample(0, seed=0)
    row["chain"] = args.chain
    row["chain_length"] = int(example["num_res"])
    batch = stack_examples([device_batch(example)])

    start = time.perf_counter()
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    jax.block_until_ready(params)
    row["init_params_s"] = time.perf_counter() - start
    row["num_params"] = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    state = TrainState.create(params, make_optimizer(cfg), rng=0)
    step = make_train_step(cfg, loss_fn_from_config(total_loss, cfg))

    def with_recycles(n):
        b = dict(batch)
        b["num_iter_recycling"] = np.full_like(batch["num_iter_recycling"], n)
        return shard_batch(b, None)

    start = time.perf_counter()
    compiled = step.lower(state, with_recycles(0)).compile()
    row["compile_s"] = time.perf_counter() - start
    try:
        mem = compiled.memory_analysis()
        row["compiled_temp_gib"] = mem.temp_size_in_bytes / 2**30
        row["compiled_argument_gib"] = mem.argument_size_in_bytes / 2**30
    except Exception:  # noqa: BLE001  (not every backend reports it)
        pass

    times: dict = {}
    losses = []
    for n in args.recycles:
        b = with_recycles(n)
        state, m = compiled(state, b)  # warm-up at this recycle count (same executable)
        jax.block_until_ready(m)
        ts = []
        for _ in range(args.steps):
            s = time.perf_counter()
            state, m = compiled(state, b)
            jax.block_until_ready(m)
            ts.append(time.perf_counter() - s)
            losses.append(float(m["loss"]))
        times[n] = float(np.median(ts))
        row[f"step_s_recycle{n}"] = times[n]
        if int(m["skipped"]):
            row.setdefault("warnings", []).append(f"non-finite step at {n} recycles")
    max_r = int(cfg.model.num_recycle)
    if set(range(max_r + 1)) <= set(times):
        row["step_s_expected"] = float(np.mean([times[n] for n in range(max_r + 1)]))
    elif len(times) >= 2:  # step time is affine in the recycle count: interpolate the expectation
        ns = sorted(times)
        slope = (times[ns[-1]] - times[ns[0]]) / (ns[-1] - ns[0])
        row["step_s_expected"] = float(times[ns[0]] + slope * (max_r / 2 - ns[0]))
        row["step_s_expected_note"] = f"interpolated from recycles {ns[0]} and {ns[-1]} (uniform 0..{max_r})"
    fwd = FORWARD_TFLOP_ESTIMATE.get(args.config) if not args.set else None
    if fwd and 0 in times:
        row["achieved_tflops_recycle0_est"] = 4 * fwd / times[0]
    row["loss_first_last"] = [losses[0], losses[-1]] if losses else None
    peak, limit = peak_bytes(), device_limit_bytes()
    if peak is not None:
        row["peak_gib"] = peak / 2**30
    if limit is not None:
        row["device_limit_gib"] = limit / 2**30
    return row


def print_table(rows, device) -> None:
    print(f"\nAlphaFold2 training step on {device} (per-device batch 1)")
    if rows and "shapes" in rows[0]:
        print("shapes:", json.dumps(rows[0]["shapes"]))
    cols = [
        ("kernels", "kernels", "{}"),
        ("remat_policy", "remat", "{}"),
        ("compile_s", "compile s", "{:.1f}"),
        ("step_s_recycle0", "step s (0 rec)", "{:.3f}"),
        ("step_s_recycle3", "step s (3 rec)", "{:.3f}"),
        ("step_s_expected", "step s (E)", "{:.3f}"),
        ("peak_gib", "peak GiB", "{:.1f}"),
        ("achieved_tflops_recycle0_est", "TF/s est", "{:.0f}"),
    ]
    print("".join(f"{h:>16}" for _, h, _ in cols))
    for r in rows:
        cells = []
        for key, _, spec in cols:
            v = r.get(key)
            cells.append(f"{(spec.format(v) if v is not None else '-'):>16}")
        print("".join(cells) + (f"  error: {r['error'][:200]}" if "error" in r else ""))
    for policy in dict.fromkeys(r.get("remat_policy") for r in rows):
        by = {r["kernels"]: r for r in rows if "error" not in r and r.get("remat_policy") == policy}
        if "xla" in by and "pallas" in by:
            for key in ("step_s_recycle0", "step_s_expected"):
                if key in by["xla"] and key in by["pallas"]:
                    print(f"speed-up pallas vs xla, remat {policy} ({key}): {by['xla'][key] / by['pallas'][key]:.2f}x")


def pick_remat_policy(rows, headroom: float) -> dict:
    """Per kernels variant: the fastest policy (expected step time, else 0 recycles) whose peak memory is at
    most `headroom` x the device's memory."""
    best = {}
    for r in rows:
        if "error" in r or r.get("peak_gib") is None or r.get("device_limit_gib") is None:
            continue
        t = r.get("step_s_expected", r.get("step_s_recycle0"))
        if t is None or r["peak_gib"] > headroom * r["device_limit_gib"]:
            continue
        if r["kernels"] not in best or t < best[r["kernels"]]["step_s"]:
            best[r["kernels"]] = {"remat_policy": r["remat_policy"], "step_s": t, "peak_gib": r["peak_gib"]}
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="folder of <pdb_id>.cif files")
    ap.add_argument("--alignment-dir", required=True, help="folder of <pdb_id>_<chain>/ alignments")
    ap.add_argument("--chain", default="1k1a_A", help="chain to crop (default 1k1a_A, 241 residues)")
    ap.add_argument("--config", default="initial_training")
    ap.add_argument("--kernels", nargs="+", default=["xla", "pallas"], choices=["xla", "pallas"])
    ap.add_argument("--recycles", nargs="+", type=int, default=[0, 3])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per recycle count (median reported)")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="config override")
    ap.add_argument(
        "--remat-policies",
        nargs="+",
        default=[None],
        choices=["nothing", "dots", "dots_no_batch", "offload_dots"],
        help="sweep model.global_config.remat_policy (default: the preset's)",
    )
    ap.add_argument("--remat-policy", default=None, help=argparse.SUPPRESS)  # worker: one policy
    ap.add_argument("--headroom", type=float, default=0.8, help="fraction of device memory a default may use")
    ap.add_argument("--timeout", type=float, default=480, help="seconds per variant")
    ap.add_argument("--out", default=None, help="JSON file or folder (default bench/results/)")
    ap.add_argument("--scratch", default="/tmp/jaxfold-bench")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # one variant, one process: print its row as the last line
        args.kernels = args.kernels[0]
        try:
            row = run_variant(args)
        except Exception as e:  # noqa: BLE001  (report, the driver keeps going)
            row = {"kernels": args.kernels, "error": f"{type(e).__name__}: {e}"[:2000]}
        print("ROW " + json.dumps(row), flush=True)
        return 0

    device = device_kind()
    rows = []
    for policy, kernels in [(p, k) for p in args.remat_policies for k in args.kernels]:
        cmd = [
            "--worker",
            "--kernels",
            kernels,
            "--data-dir",
            args.data_dir,
            "--alignment-dir",
            args.alignment_dir,
            "--chain",
            args.chain,
            "--config",
            args.config,
            "--steps",
            str(args.steps),
            "--scratch",
            args.scratch,
            "--recycles",
            *map(str, args.recycles),
        ]
        if policy:
            cmd += ["--remat-policy", policy]
        for s in args.set:
            cmd += ["--set", s]
        try:
            proc = run_module("train_step", cmd, timeout=args.timeout)
            row = last_json_line(proc.stdout, "ROW ") or {
                "kernels": kernels,
                "error": f"worker exited {proc.returncode}: {proc.stderr[-1500:]}",
            }
        except subprocess.TimeoutExpired:
            row = {"kernels": kernels, "error": f"timed out after {args.timeout:.0f} s"}
        row.setdefault("remat_policy", policy)
        record(rows, row)
    print_table(rows, device)
    best = pick_remat_policy(rows, args.headroom)
    for kernels, b in best.items():
        print(
            f"fastest remat policy within {args.headroom:.0%} of device memory, {kernels}: {b['remat_policy']} "
            f"({b['step_s']:.3f} s, {b['peak_gib']:.1f} GiB)"
        )
    write_results(
        args.out,
        "train-step",
        {
            "device": device,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "rows": rows,
            "best_remat_policy": best,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
