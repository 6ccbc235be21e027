"""Long chains on one device: peak memory and time of a whole prediction, fp32 and bf16, up to the longest N.

    python -m bench.long_sequence                       # the default plan (GPU): full runs, probes, bisection
    python -m bench.long_sequence --full bf16:256 fp32:1024 --probe bf16:8192 --bisect bf16
    python -m bench.long_sequence --full bf16:2048 bf16:2048:0   # auto chunk vs unchunked, same machine
    python -m bench.long_sequence --quick                # CPU smoke run (tiny preset, small N)

A case is `DTYPE:N`, or `DTYPE:N:CHUNK` for its own chunk size (`auto`, a number, 0 = none; default
`--chunk-size`). Where a case also ran unchunked in the same run, the table adds its time against that
(`vs unchunked`: unchunked predict time / this one, higher is faster).

Each case runs `jaxfold.model.predict.predict` (the one prediction path, `outputs="lean"`, as `infer.py` runs
it) in its own process, so that the device's `peak_bytes_in_use` is that case's alone, with
`XLA_PYTHON_CLIENT_PREALLOCATE=false`; it prints a line once compiled and after every pass, so a case that
`--timeout` stops is still reported with its chunk size, XLA's account of the compiled pass, the passes it
finished and its peak so far (status `timeout/compiled` or `timeout/running`). With `--warm-cache` a case is
compiled in one process (into a compilation cache of its own) and predicted in a second that loads the
programs: its `peak_gib` is then the prediction's without XLA's compile-time buffers (the GPU autotuner
times kernels on fresh operand-sized buffers), as a repeat run of `infer.py` (cache on by default) sees it;
the compiling process's peak is `cold_peak_gib` ("cold GiB"). Model: full `model_1_ptm`
with a deep MSA: 508 MSA clusters + 4 template rows, 5,120 extra MSA rows, 4 templates, 3 recycles.
Features: the bundled example 1psm_A (its sequence and its real MSA rows) tiled to N residues and to the
row counts (the work and memory depend on the shapes only).

- `full`: 48 Evoformer blocks, 4 extra-MSA blocks, 3 recycles: the time a user waits (compile reported
  apart; the steady-state time is a second, cached run when `--repeat`).
- `probe`: every width real but two blocks of the Evoformer and extra-MSA stacks, one template pair block
  (`probe_overrides`: why two) and one recycle (none with `--num-recycle 0`: one pass, for lengths where even
  two probe passes take minutes), for lengths too slow to run whole: a scanned stack's peak memory does not
  grow with its depth beyond two blocks, and every pass is the same program with the recycled pair donated,
  so a probe's peak is the full model's to within the per-layer parameters (the probe's time is not). Rows
  before 3d2e412 probed one block per stack, which can understate the peak by an MSA.
- `--bisect DTYPE`: probes between the longest N that fitted and the shortest that did not, to 256 residues
  (a probe that its timeout stopped after a whole pass fitted).

Expected (written before measuring, H100 80 GB): the pair `[N, N, 128]` is 32 KiB x N^2 in bf16 (N=10,000:
25.6 GB) and twice that in fp32; the triangle multiplication holds the pair, one whole operand
`[N, N, 128]` and a chunk; so bf16 fits up to ~11-12k and fp32 up to ~7-8k once the other N^2 tensors
(recycled pair, template stacks, heads) are chunked or in place. Time: the Evoformer is O(N^3) in the
triangle ops: ~13 TFLOP per block at N=2,048, x48 blocks x4 passes = 2.5 PFLOP: ~10-15 s at 200-300 TF/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench._common import (
    REPO,
    RESULTS,
    cell,
    device_kind,
    is_oom,
    last_json_line,
    peak_bytes,
    print_header,
    record,
    run_module,
    write_results,
)
from jaxfold.model.memory import claim_device_memory

DEFAULT_FULL = ["bf16:256", "bf16:1024", "bf16:2048", "bf16:2048:0", "fp32:256", "fp32:1024", "fp32:1200"]
DEFAULT_PROBE = ["bf16:4096", "bf16:8192", "bf16:10240", "bf16:12288", "fp32:4096", "fp32:8192"]


def tiled_features(num_res: int, num_msa: int, num_extra: int, num_templates: int, num_passes: int) -> dict:
    """Processed features (leading recycling axis) of the bundled 1psm_A tiled to `num_res` residues."""
    import numpy as np

    from jaxfold.common import residue_constants as rc
    from jaxfold.data.parsers import parse_a3m
    from jaxfold.model.init import dummy_features

    msa = parse_a3m((REPO / "examples" / "msas" / "1psm_A" / "bfd_uniclust_hits.a3m").read_text())
    rows = np.asarray([[rc.HHBLITS_AA_TO_ID.get(a, 20) for a in s] for s in msa.sequences], np.int32)
    tiled = np.tile(rows, (1, -(-num_res // rows.shape[1])))[:, :num_res]
    features = dummy_features(
        None,
        num_res=num_res,
        num_seq=num_msa,
        num_extra=num_extra,
        num_templates=num_templates,
        num_iterations=num_passes,
    )
    aatype = np.minimum(tiled[0], 19)
    features["aatype"][:] = aatype
    features["target_feat"][..., :] = 0
    features["target_feat"][:, np.arange(num_res), aatype + 1] = 1
    msa_rows = tiled[np.arange(num_msa) % tiled.shape[0]]
    features["msa_feat"][...] = 0
    features["msa_feat"][:, np.arange(num_msa)[:, None], np.arange(num_res)[None, :], msa_rows] = 1
    features["extra_msa"][...] = tiled[np.arange(num_extra) % tiled.shape[0]]
    for key, table in (("atom14_atom_exists", rc.restype_atom14_mask), ("atom37_atom_exists", rc.restype_atom37_mask)):
        features[key][:] = table[aatype]
    features["residx_atom14_to_atom37"][:] = rc.restype_atom14_to_atom37[aatype]
    features["residx_atom37_to_atom14"][:] = rc.restype_atom37_to_atom14[aatype]
    features["template_aatype"][...] = aatype
    return features


def probe_overrides(num_recycle: int) -> dict:
    """The model of a probe: two blocks of the Evoformer and extra-MSA stacks, one template pair block, at most
    one recycle.

    Two blocks, not one: a block's MSA output is the next block's input, so in a real stack the (extra) MSA
    lives through every block's pair updates. With one block XLA drops it once the block's outer product mean
    has read it, and the pair updates then run beside one MSA fewer: an H100 probe of fp32 8,000 (one block)
    peaked at 68.6 GiB with no extra MSA (9.8 GiB) among the values live at its peak. With two, the peak is the
    full stack's (a scanned stack's peak does not grow beyond that). The template pair stack's output is read
    after it either way, so one block stands for it."""
    return dict(
        evoformer_num_block=2,
        extra_msa_stack_num_block=2,
        template_pair_stack_num_block=1,
        num_recycle=min(1, num_recycle),
    )


class CompiledOnly(Exception):
    """Stops a `--compile-only` case once its programs are compiled (and in the compilation cache)."""


def run_case(args) -> dict:
    """One case in this process (called by the parent through `--one`)."""
    import jax

    from jaxfold.common.compilation_cache import enable_compilation_cache
    from jaxfold.config import model_config
    from jaxfold.model.init import init_params
    from jaxfold.model.memory import ChainTooLongError
    from jaxfold.model.predict import predict

    dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    overrides = dict(dtype=dtype, num_recycle=args.num_recycle)
    preset = "tiny" if args.quick else "model_1_ptm"
    if args.mode == "probe":
        overrides.update(probe_overrides(args.num_recycle))
    cfg = model_config(preset, **overrides)
    num_passes = cfg.model.num_recycle + 1
    row = {
        "mode": args.mode,
        "dtype": args.dtype,
        "n_res": args.n,
        "n_msa": args.n_msa,
        "n_extra": args.n_extra,
        "n_templates": args.n_templates,
        "num_recycle": cfg.model.num_recycle,
        "blocks": cfg.model.embeddings_and_evoformer.evoformer_num_block,
        "kernels": args.kernels,
        "chunk_size_arg": args.chunk_size,
    }
    if args.compilation_cache:
        warning = enable_compilation_cache(args.compilation_cache)
        if warning:
            raise SystemExit(f"--compilation-cache: {warning}")
    features = tiled_features(args.n, args.n_msa, args.n_extra, args.n_templates, num_passes)
    params = jax.device_put(init_params(cfg, jax.random.PRNGKey(0)))
    chunk = args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size)
    timings: dict = {}

    def progress(status: str, **extra) -> None:
        # A line per stage, so that a case stopped by its timeout still reports how far it got (`spawn`).
        print(json.dumps(with_timings(dict(row, status=status, **extra), timings)), flush=True)

    passes: list[float] = []

    def on_pass(index: int, num_passes: int, seconds: float) -> None:
        passes.append(seconds)
        progress("running", pass_s=list(passes))

    def on_compiled(seconds: float) -> None:
        progress("compiled")
        if args.compile_only:
            raise CompiledOnly

    try:
        out = predict(
            cfg,
            params,
            features,
            kernels=args.kernels,
            chunk_size=chunk,
            outputs="lean",
            timings=timings,
            on_compiled=on_compiled,
            on_pass=on_pass,
        )
        row["predict_s"] = timings["predict"]
        if args.repeat:
            timings2: dict = {}
            predict(cfg, params, features, kernels=args.kernels, chunk_size=chunk, outputs="lean", timings=timings2)
            row["predict_repeat_s"] = timings2["predict"]
        row["mean_plddt"] = float(out["confidence/plddt"].mean())
        row["finite"] = bool(jax.numpy.isfinite(out["structure_module/final_atom_positions"]).all())
        row["status"] = "ok"
    except CompiledOnly:
        row["status"] = "compiled"
    except ChainTooLongError as err:
        row["status"] = "too_long_error"
        row["error"] = str(err)[:400]
    except Exception as err:  # noqa: BLE001  (out of memory and other failures are results here)
        text = f"{type(err).__name__}: {err}"
        row["status"] = "oom" if is_oom(text) else "error"
        row["error"] = text[:400]
    return with_timings(row, timings)


def with_timings(row: dict, timings: dict) -> dict:
    """`row` with what `predict` has put in `timings` so far (settings, compile time, XLA's account of the
    compiled pass) and the device's peak memory."""
    compiled = (timings.get("compiled_bytes") or {}).get("iteration")
    if compiled:  # XLA's own account of the pass's program, beside the estimate and the measured peak
        row["compiled_temp_gib"] = compiled["temp"] / 2**30
        row["compiled_argument_gib"] = compiled["argument"] / 2**30
    if "compile" in timings:
        row["compile_s"] = timings["compile"]
    settings = timings.get("settings")
    if settings is not None:
        row.update(
            chunk_size=settings.chunk_size,
            kernels=settings.kernels,
            estimated_peak_gib=settings.estimated_peak_bytes / 2**30,
            budget_gib=settings.budget_bytes / 2**30,
            autotune=settings.autotune,
        )
    peak = peak_bytes()
    if peak is not None:
        row["peak_gib"] = peak / 2**30
    # What the allocator has held from the driver: with preallocation off it grows region by region, and a
    # large allocation needs a new region of its own.
    pool = peak_bytes(stat="peak_pool_bytes")
    if pool is not None:
        row["peak_pool_gib"] = pool / 2**30
    return row


def parse_case(spec: str, default_chunk: str) -> tuple[str, int, str]:
    """`DTYPE:N[:CHUNK]` -> (dtype, N, chunk size argument); a clear error for anything else."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("bf16", "fp32") or not parts[1].isdigit():
        raise ValueError(f"case {spec!r}: expected DTYPE:N or DTYPE:N:CHUNK with DTYPE bf16 or fp32")
    chunk = parts[2] if len(parts) == 3 else str(default_chunk)
    if chunk != "auto" and not chunk.isdigit():
        raise ValueError(f"case {spec!r}: the chunk size must be 'auto' or a number (0 = none)")
    return parts[0], int(parts[1]), chunk


def spawn(args, mode: str, spec: str, timeout: float) -> dict:
    dtype, num_res, chunk = parse_case(spec, args.chunk_size)
    n = str(num_res)
    cmd = [
        "--one",
        "--mode",
        mode,
        "--dtype",
        dtype,
        "--n",
        n,
        "--n-msa",
        str(args.n_msa),
        "--n-extra",
        str(args.n_extra),
        "--n-templates",
        str(args.n_templates),
        "--num-recycle",
        str(args.num_recycle),
        "--kernels",
        args.kernels,
        "--chunk-size",
        chunk,
    ]
    if args.quick:
        cmd.append("--quick")
    if args.repeat and mode == "full":
        cmd.append("--repeat")
    if not args.warm_cache:
        return run_one(cmd, mode, dtype, int(n), timeout, args.preallocate)
    # Compile in one process, into a compilation cache of this case's own; then predict in a second process
    # that loads the programs, so its peak is the prediction's without XLA's compile-time buffers (the GPU
    # autotuner times kernels on fresh operand-sized buffers), as a repeat run of infer.py (whose cache is
    # on by default) sees it.
    with tempfile.TemporaryDirectory(prefix="jaxfold-bench-cache-") as cache:
        start = time.perf_counter()
        cold = run_one(
            cmd + ["--compilation-cache", cache, "--compile-only"], mode, dtype, int(n), timeout, args.preallocate
        )
        if cold["status"] != "compiled":
            return dict(cold, warm_cache=False)
        row = run_one(
            cmd + ["--compilation-cache", cache],
            mode,
            dtype,
            int(n),
            timeout - (time.perf_counter() - start),
            args.preallocate,
        )
    row.update(
        warm_cache=True,
        cold_compile_s=cold.get("compile_s"),
        cold_peak_gib=cold.get("peak_gib"),  # the compiling process's peak: parameters, features, autotuner
        wall_s=time.perf_counter() - start,
    )
    return row


def run_one(cmd: list[str], mode: str, dtype: str, n: int, timeout: float, preallocate: bool = False) -> dict:
    """One `--one` case process: its result row, or how far it got when `timeout` stopped it; either says
    whether the process ran with preallocation (`preallocated`)."""
    start = time.perf_counter()
    try:
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="true" if preallocate else "false")
        claim_device_memory(env)  # the GPU share infer.py gives JAX (an explicit setting wins)
        proc = run_module("long_sequence", cmd, timeout=max(1.0, timeout), env=env)
    except subprocess.TimeoutExpired as err:
        # The case's last progress line says how far it got (compiled, passes done, peak so far).
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        row = last_json_line(partial) or {"mode": mode, "dtype": dtype, "n_res": n}
        return dict(row, status="timeout", reached=row.get("status"), wall_s=timeout, preallocated=preallocate)
    row = last_json_line(proc.stdout)
    if row is None:
        row = {"mode": mode, "dtype": dtype, "n_res": n, "status": "crashed", "error": proc.stderr[-600:]}
    return dict(row, wall_s=time.perf_counter() - start, preallocated=preallocate)


def fits(row: dict) -> bool:
    """Whether a case showed that its length fits the device: it finished, or its timeout stopped it after at
    least one whole pass (a long probe's memory is known before its time is)."""
    return row["status"] == "ok" or (row["status"] == "timeout" and row.get("reached") == "running")


def print_table(rows, device: str) -> None:
    print_header(
        f"Long chains on {device} (model_1_ptm widths, lean outputs, deep MSA)",
        f"{'mode':<6}{'dtype':<6}{'N':>7}{'chunk':>7}{'kern':>7}{'status':>17}{'peak GiB':>10}{'cold GiB':>9}"
        f"{'est GiB':>9}"
        f"{'compile s':>10}{'predict s':>10}{'repeat s':>10}{'vs unchunked':>13}",
    )
    for r in rows:
        status = r["status"] + (f"/{r['reached']}" if r.get("reached") else "")  # timeout/running: how far it got

        def f(key, spec=".2f"):
            return cell(r.get(key), spec)

        print(
            f"{r['mode']:<6}{r['dtype']:<6}{r['n_res']:>7}{str(r.get('chunk_size', '-')):>7}"
            f"{str(r.get('kernels', '-')):>7}{status:>17}{f('peak_gib'):>10}{f('cold_peak_gib'):>9}"
            f"{f('estimated_peak_gib'):>9}"
            f"{f('compile_s', '.1f'):>10}{f('predict_s'):>10}{f('predict_repeat_s'):>10}"
            f"{f('speed_vs_unchunked', '.2f'):>13}"
        )


def add_unchunked_ratios(rows) -> None:
    """`speed_vs_unchunked` = unchunked predict time / this row's, for rows whose (mode, dtype, N) also ran
    with `--chunk-size 0` (a `DTYPE:N:0` case) in this run."""
    unchunked = {
        (r["mode"], r["dtype"], r["n_res"]): r["predict_s"]
        for r in rows
        if r.get("status") == "ok" and str(r.get("chunk_size_arg")) == "0" and r.get("predict_s")
    }
    for r in rows:
        base = unchunked.get((r["mode"], r["dtype"], r["n_res"]))
        if base and r.get("status") == "ok" and r.get("predict_s"):
            r["speed_vs_unchunked"] = base / r["predict_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", nargs="*", default=None, help=f"DTYPE:N cases run whole (default: {DEFAULT_FULL})")
    p.add_argument("--probe", nargs="*", default=None, help=f"DTYPE:N cases probed (default: {DEFAULT_PROBE})")
    p.add_argument("--bisect", nargs="*", default=[], help="dtypes to bisect the longest fitting N for")
    p.add_argument("--n-msa", type=int, default=508)
    p.add_argument("--n-extra", type=int, default=5120)
    p.add_argument("--n-templates", type=int, default=4)
    p.add_argument("--num-recycle", type=int, default=3)
    p.add_argument("--kernels", default="auto")
    p.add_argument("--chunk-size", default="auto")
    p.add_argument("--repeat", action="store_true", help="time a second, cached run of each full case")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no case after this many seconds (the rows so far are written)",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="compile each case in a process of its own first, then measure it in a second process that loads "
        "the programs from the compilation cache: a peak without XLA's compile-time buffers (the first "
        "process's peak is kept as cold_peak_gib)",
    )
    p.add_argument(
        "--preallocate",
        action="store_true",
        help="run each case with XLA_PYTHON_CLIENT_PREALLOCATE=true (JAX's default, and infer.py's): the allocator "
        "takes its whole share as one region at start instead of growing region by region; peak_gib is "
        "measured the same way (bytes in use)",
    )
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny preset, small N and MSA")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--compilation-cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args)), flush=True)
        return 0
    if args.quick:
        args.n_msa, args.n_extra, args.n_templates, args.num_recycle = 8, 16, 2, 1
        full = args.full if args.full is not None else ["fp32:24", "bf16:24"]
        probe = args.probe if args.probe is not None else ["bf16:48"]
    else:
        full = DEFAULT_FULL if args.full is None else args.full
        probe = DEFAULT_PROBE if args.probe is None else args.probe

    for spec in full + probe:
        parse_case(spec, args.chunk_size)  # a malformed case stops here, before any case runs
    device = device_kind()  # the cases run in their own processes
    rows = []
    start = time.perf_counter()

    def within_budget(spec: str) -> bool:
        if args.budget_s is None or time.perf_counter() - start < args.budget_s:
            return True
        print(f"budget of {args.budget_s:.0f} s spent: {spec} not run", flush=True)
        return False

    for mode, specs in (("full", full), ("probe", probe)):
        for spec in specs:
            if within_budget(spec):
                record(rows, spawn(args, mode, spec, args.timeout))
    for dtype in args.bisect:
        ok = [r["n_res"] for r in rows if r["dtype"] == dtype and fits(r)]
        bad = [r["n_res"] for r in rows if r["dtype"] == dtype and not fits(r)]
        lo, hi = (max(ok) if ok else 256), (min(n for n in bad if n > max(ok, default=0)) if bad else None)
        while hi is not None and hi - lo > 256:
            mid = (lo + hi) // 2 // 128 * 128
            if not within_budget(f"{dtype}:{mid}"):
                break
            row = spawn(args, "probe", f"{dtype}:{mid}", args.timeout)
            row["bisection"] = True
            record(rows, row)
            lo, hi = (mid, hi) if fits(row) else (lo, mid)
        if hi is not None:
            print(f"{dtype}: longest chain that fits: {lo} (shortest that did not: {hi})")
    add_unchunked_ratios(rows)
    print_table(rows, device)
    write_results(args.out, "long-sequence", {"device": device, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
