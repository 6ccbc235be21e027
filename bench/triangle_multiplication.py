"""Benchmark the triangle multiplicative update: fused Pallas kernel vs XLA (and cuEquivariance if installed),
plus the Evoformer block and the transitions, in one run.

    python -m bench.triangle_multiplication            # GPU: full run (< 6 min on an H100), table + JSON
    python -m bench.triangle_multiplication --quick    # tiny shapes, CPU (Pallas interpret mode), ~1-2 min
    python -m bench.triangle_multiplication --budget-s 270 --out $OUT/tri.json   # the lead's H100 run

cuEquivariance rows appear when `cuequivariance_jax` imports: `pip install ".[cueq]"`, or offline
`pip install --no-deps cuequivariance-0.13.0-*.whl cuequivariance_jax-0.13.0-*.whl
cuequivariance_ops_jax_cu13-0.13.0-*.whl cuequivariance_ops_cu13-0.13.0-*.whl einops-*.whl tqdm-*.whl
nvidia_ml_py-*.whl platformdirs-*.whl` (~46 MB; the ops wheels are NVIDIA-proprietary). cuEquivariance
falls back to plain JAX below its own length threshold (`CUEQ_TRIMUL_FALLBACK_THRESHOLD`), so its N = 256
row may not be its kernel.

Rows (bf16 activations, fp32 parameters cast at use, c = c_z = 128, all masks ones), each fwd and fwd+bwd:

* `module`: the whole `TriangleMultiplication` (input LayerNorm, four projections, product, center LN,
  output projection, gate), outgoing and incoming, `kernels='xla'` vs `kernels='pallas'`
  (Pallas LayerNorm + XLA projections + the fused product/epilogue kernel);
* `core` (outgoing): the part after the operands (`triangle_update`: product -> LN -> projection x gate):
  'xla', 'pallas' (Pallas product + fused epilogue), 'pallas_xla_product' (cuBLAS batched product on the
  channel-major operands + the fused epilogue), 'cueq' (`cuequivariance_jax.triangle_multiplicative_update`,
  the whole update, when importable; its rows say 'unavailable' otherwise);
* `sweep`: Pallas product/epilogue tiles, core forward at N = 1024;
* `evoformer_block`: one block, N_seq 128 x N_res 256, fwd+bwd, xla vs pallas (bench/kernels.py's code);
* `transition`: the pair transition (LN, 128 -> 512, ReLU, 512 -> 128) at N_res 256/1024 and the MSA
  transition at 128 x 256 (c = 256): the model's XLA Transition vs `pallas_kernels.transition` (fused
  LN -> GEMM -> ReLU -> GEMM forward, hidden layer never in HBM; XLA backward). Keep the kernel (wire it
  into `jaxfold/model/transition.py`) only if these rows show it winning.

For each row: median time (bench/kernels.py's timer), the compiled executable's XLA temp bytes, the
process's peak device bytes after the row (`memory_stats()["peak_bytes_in_use"]`, monotone: rows run in
increasing size, Pallas before XLA at each size, so a jump marks the row that set it), achieved TFLOP/s
(model FLOPs below), the ratio against the XLA row measured in the same run, and the max abs difference
from the XLA output.

Expected, before measuring (H100 SXM: ~800 TFLOP/s dense bf16 matmul, ~3.3 TB/s HBM)
----------------------------------------------------------------------------------
FLOPs of one triangle update, forward (c = c_z = 128): product 2 N^3 c, plus six N^2 x 128 x 128
matmuls (four operand projections/gates, gating linear, output projection) = 12 N^2 c^2:

    N = 1024:  0.275 TF (product) + 0.206 TF = 0.481 TFLOP  -> 0.60 ms at 800 TF/s
    N = 2048:  2.199 TF (product) + 0.825 TF = 3.02  TFLOP  -> 3.78 ms
    fwd+bwd ~ 3x forward: 1.44 TFLOP (1.8 ms) at N = 1024, 9.07 TFLOP (11.3 ms) at N = 2048.

Bytes, in units U = one [N, N, 128] bf16 tensor (U = 268 MB at N = 1024, 1.07 GB at N = 2048):
compulsory read act + write update = 2U (0.16 / 0.65 ms). This implementation moves about 22U forward
(input LN 2U; XLA's four projection dots 8U + the mask/sigmoid/gate fusion writing channel-major
left/right 6U; product 2U read + 1U write (operand panels re-read from L2: one channel's operands are
2 MB at N = 1024, 8 MB at 2048); epilogue 3U) -> 5.9 GB = 1.8 ms at N = 1024, 23.6 GB = 7.1 ms at 2048.
XLA's unfused path adds the einsum's operand/output transposes and the LN/projection/gate round trips
(~+10U). Expected forward: ~2.5-3 ms at N = 1024 (compute ~1 ms at a Triton GEMM's ~60% of peak + memory
~1.8 ms), ~12-14 ms at N = 2048; targets <= 5 ms / <= 30 ms. At N = 256 the update is 0.011 TFLOP and
0.37 GB: ~0.15 ms, launch/latency bound.
Pair transition, N^2 x (2 x 128 x 512 x 2) = 262k N^2 FLOP (0.27 TF at N = 1024: 0.34 ms) and ~3U of
compulsory traffic (read x, write y: 2U = 0.54 GB, 0.16 ms): XLA writes and re-reads the 4x hidden
layer in bf16 (+8U = 2.1 GB, +0.65 ms) and the LN output (+2U), so expected ~1.0-1.2 ms for XLA and
~0.4-0.5 ms fused (compute-bound at ~70% of peak) forward at N = 1024.

Writes bench/results/triangle_multiplication-<device>-<UTC stamp>.json with commit, device and all rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform

import jax
import jax.numpy as jnp

from bench._common import (
    Budget,
    commit,
    compile_with_temp,
    device_info,
    jaxlib_version,
    peak_bytes,
    print_header,
    short_error,
    time_compiled,
    write_results,
)
from bench.kernels import bench_evoformer_block
from pallas_kernels import _compat
from pallas_kernels import triangle_multiplication as ptm

C = 128
EQ = {"outgoing": "ikc,jkc->ijc", "incoming": "kjc,kic->ijc"}


def model_flops(n: int, c: int = C) -> float:
    return 2.0 * n**3 * c + 12.0 * n**2 * c * c


def _module(direction: str, kernels: str):
    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.triangle_multiplication import TriangleMultiplication  # noqa: PLC0415

    cfg = model_config("model_1_ptm", kernels=kernels, dtype="bfloat16", zero_init=False)
    evo = cfg.model.embeddings_and_evoformer.evoformer
    return TriangleMultiplication(evo[f"triangle_multiplication_{direction}"], cfg.model.global_config)


def _core_fn(impl: str, direction: str, tiles=None):
    from jaxfold.model.triangle_multiplication import triangle_update_xla  # noqa: PLC0415

    if impl == "xla":
        return lambda l, r, g, w: triangle_update_xla(l, r, g, w, EQ[direction])
    product = "xla" if impl == "pallas_xla_product" else "pallas"
    return lambda l, r, g, w: ptm.triangle_multiplication(
        l, r, g, *w, outgoing=direction == "outgoing", product=product, tiles=tiles
    )


def _cueq():
    try:
        import cuequivariance_jax as cuex  # noqa: PLC0415

        return cuex
    except Exception as e:  # noqa: BLE001
        return short_error(e)


def _cueq_fn(cuex, direction: str, params):
    """Our parameters in cuEquivariance's layout ([out, in] weights; fused 2c-wide input projection/gate)."""
    p = params["params"]
    t = lambda name: p[name]["weights"].T  # noqa: E731
    kw = dict(
        norm_in_weight=p["layer_norm_input"]["scale"],
        norm_in_bias=p["layer_norm_input"]["offset"],
        p_in_weight=jnp.concatenate([t("left_projection"), t("right_projection")]),
        p_in_bias=jnp.concatenate([p["left_projection"]["bias"], p["right_projection"]["bias"]]),
        g_in_weight=jnp.concatenate([t("left_gate"), t("right_gate")]),
        g_in_bias=jnp.concatenate([p["left_gate"]["bias"], p["right_gate"]["bias"]]),
        norm_out_weight=p["center_layer_norm"]["scale"],
        norm_out_bias=p["center_layer_norm"]["offset"],
        p_out_weight=t("output_projection"),
        p_out_bias=p["output_projection"]["bias"],
        g_out_weight=t("gating_linear"),
        g_out_bias=p["gating_linear"]["bias"],
    )
    return lambda act, mask: cuex.triangle_multiplicative_update(act, direction=direction, mask=mask, **kw)


def _diffs(rows, outs, kind, n, direction):
    """max |out - xla out| per row (the forward output; for fwd+bwd the output of the same vjp call)."""
    for r in rows:
        key = (r.get("mode"), r.get("impl"))
        ref = outs.get((r.get("mode"), "xla"))
        if (
            r["kind"] == kind
            and r.get("n") == n
            and r.get("direction") == direction
            and key in outs
            and ref is not None
        ):
            d = outs[key].astype(jnp.float32) - ref.astype(jnp.float32)
            r["max_abs_diff_vs_xla"] = float(jnp.max(jnp.abs(d)))


def _measure(fn, args, quick, row):
    try:
        compiled, temp = compile_with_temp(fn, args)
        seconds, meta = time_compiled(compiled, args, quick)
        out = compiled(*args)
        row.update(time_ms=seconds * 1e3, temp_bytes=temp, peak_bytes=peak_bytes(), **meta)
        return jax.tree_util.tree_leaves(out)[0]
    except Exception as e:  # noqa: BLE001  (record, keep going)
        row["error"] = short_error(e)
        return None


def _fwdbwd(f):
    def g(*args):
        out, vjp = jax.vjp(f, *args)
        return out, vjp(out)  # cotangent = the output itself: a full-size, data-dependent gradient

    return g


def bench_module(sizes, budget: Budget, quick: bool, log):
    rows = []
    cuex = _cueq()
    for n in sizes:
        key = jax.random.key(n)
        act = jax.random.normal(key, (n, n, C), jnp.bfloat16)
        mask = jnp.ones((n, n), jnp.bfloat16)
        for direction in ("outgoing", "incoming"):
            # Whole module: Pallas first so the monotone process peak is attributed fairly.
            params = _module(direction, "xla").init(key, act, mask)
            outs = {}
            for mode in ("fwd", "fwd+bwd"):
                for kernels in ("pallas", "xla") + (("cueq",) if not isinstance(cuex, str) else ()):
                    row = {
                        "kind": "module",
                        "n": n,
                        "direction": direction,
                        "mode": mode,
                        "impl": kernels,
                        "tflop": model_flops(n) * (3 if mode == "fwd+bwd" else 1) / 1e12,
                    }
                    if budget.left() <= 0:
                        row["error"] = "skipped: budget"
                        rows.append(row)
                        continue
                    if kernels == "cueq":
                        f = _cueq_fn(cuex, direction, params)
                        # cuEquivariance fwd+bwd: gradient with respect to the input only.
                        fn = (
                            (lambda p, a, m, f=f: f(a, m))
                            if mode == "fwd"
                            else (lambda p, a, m, f=f: _fwdbwd(lambda a: f(a, m))(a))
                        )
                    else:
                        mod = _module(direction, kernels)
                        f = lambda p, a, m, mod=mod: mod.apply(p, a, m)  # noqa: E731
                        fn = f if mode == "fwd" else (lambda p, a, m, f=f: _fwdbwd(lambda p, a: f(p, a, m))(p, a))
                    out = _measure(fn, (params, act, mask), quick, row)
                    if out is not None:
                        outs[(mode, kernels)] = out
                    rows.append(row)
                    log(f"module N={n} {direction} {mode} {kernels}: {row.get('time_ms', row.get('error'))}")
            _diffs(rows, outs, "module", n, direction)
            if not isinstance(cuex, str):
                pass
            elif n == sizes[0] and direction == "outgoing":
                rows.append(
                    {
                        "kind": "module",
                        "n": n,
                        "direction": direction,
                        "mode": "-",
                        "impl": "cueq",
                        "error": f"unavailable: {cuex}",
                    }
                )
    return rows


def bench_core(
    sizes,
    budget: Budget,
    quick: bool,
    log,
    directions=("outgoing",),
    impls=None,
    tiles: ptm.Tiles | None = None,
    tag: str = "",
    modes=("fwd", "fwd+bwd"),
):
    """The part after the operands (product -> LN -> projection x gate): xla, pallas, pallas_xla_product."""
    from jaxfold.model.triangle_multiplication import OutputWeights  # noqa: PLC0415

    rows = []
    for n in sizes:
        key = jax.random.key(n)
        act = jax.random.normal(key, (n, n, C), jnp.bfloat16)
        for direction in directions:
            ks = jax.random.split(key, 8)
            left = jax.random.normal(ks[0], (n, n, C), jnp.bfloat16)
            right = jax.random.normal(ks[1], (n, n, C), jnp.bfloat16)
            w = OutputWeights(
                jnp.ones((C,)),
                jnp.zeros((C,)),
                jax.random.normal(ks[2], (C, C)) / C**0.5,
                jnp.zeros((C,)),
                jax.random.normal(ks[3], (C, C)) / C**0.5,
                jnp.ones((C,)),
            )
            outs = {}
            for mode in modes:
                for impl in impls or ("pallas", "pallas_xla_product", "xla"):
                    row = {
                        "kind": "core" + tag,
                        "n": n,
                        "direction": direction,
                        "mode": mode,
                        "impl": impl,
                        "tflop": 2.0 * n**3 * C * (3 if mode == "fwd+bwd" else 1) / 1e12,
                    }
                    if budget.left() <= 0:
                        row["error"] = "skipped: budget"
                        rows.append(row)
                        continue
                    f = _core_fn(impl, direction, tiles)
                    fn = f if mode == "fwd" else _fwdbwd(f)
                    out = _measure(fn, (left, right, act, w), quick, row)
                    rows.append(row)
                    if out is not None:
                        outs[(mode, impl)] = out
                    log(f"core N={n} {direction} {mode} {impl}: {row.get('time_ms', row.get('error'))}")
            _diffs(rows, outs, "core" + tag, n, direction)
            del left, right
    return rows


def bench_transition(sizes, budget: Budget, quick: bool, log):
    """Pair transitions [N, N, 128] (N in sizes) and the MSA transition [128, 256, 256] (quick: [4, 16, 32]):
    the model's Transition (XLA) vs pallas_kernels.transition (fused forward, XLA backward)."""
    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.transition import Transition  # noqa: PLC0415
    from pallas_kernels import transition as ptr  # noqa: PLC0415

    cfg = model_config("model_1_ptm", dtype="bfloat16", zero_init=False)
    evo = cfg.model.embeddings_and_evoformer.evoformer
    cases = [("pair", (n, n, C), evo.pair_transition) for n in sizes]
    cases.append(("msa", (4, 16, 32) if quick else (128, 256, 256), evo.msa_transition))
    rows = []
    for name, shape, tcfg in cases:
        mod = Transition(tcfg, cfg.model.global_config)
        act = jax.random.normal(jax.random.key(1), shape, jnp.bfloat16)
        mask = jnp.ones(shape[:2], jnp.bfloat16)
        params = mod.init(jax.random.key(0), act, mask)
        hidden = params["params"]["transition1"]["weights"].shape[-1]
        impls = {
            "xla": lambda p, a, mod=mod, mask=mask: mod.apply(p, a, mask),
            "pallas": lambda p, a: ptr.transition(
                a,
                p["params"]["input_layer_norm"]["scale"],
                p["params"]["input_layer_norm"]["offset"],
                p["params"]["transition1"]["weights"],
                p["params"]["transition1"]["bias"],
                p["params"]["transition2"]["weights"],
                p["params"]["transition2"]["bias"],
            ),
        }
        outs = {}
        for mode in ("fwd", "fwd+bwd"):
            for impl in ("pallas", "xla"):
                flop = 4.0 * act.size * hidden * (3 if mode == "fwd+bwd" else 1)  # two [rows, c] x [c, h] GEMMs
                row = {
                    "kind": "transition",
                    "n": "x".join(map(str, shape)),
                    "direction": name,
                    "mode": mode,
                    "impl": impl,
                    "tflop": flop / 1e12,
                }
                if budget.left() <= 0:
                    row["error"] = "skipped: budget"
                else:
                    f = impls[impl]
                    out = _measure(f if mode == "fwd" else _fwdbwd(f), (params, act), quick, row)
                    if out is not None:
                        outs[(mode, impl)] = out
                rows.append(row)
                log(f"transition {name} {shape} {mode} {impl}: {row.get('time_ms', row.get('error'))}")
        _diffs(rows, outs, "transition", "x".join(map(str, shape)), name)
    return rows


SWEEP = [
    ptm.Tiles(bm=128, bn=128, bk=32, num_warps=4, num_stages=3),  # the default
    ptm.Tiles(bm=128, bn=128, bk=64, num_warps=8, num_stages=3),
    ptm.Tiles(bm=128, bn=64, bk=32, num_warps=4, num_stages=4),
    ptm.Tiles(bm=64, bn=64, bk=32, num_warps=4, num_stages=3),
    ptm.Tiles(bm=128, bn=128, bk=32, num_warps=8, num_stages=4),
    ptm.Tiles(bj=16),
    ptm.Tiles(bj=64),
    ptm.Tiles(bj=64, epilogue_warps=8),
    ptm.Tiles(epilogue_rows=1),
    ptm.Tiles(epilogue_rows=32),
]


def bench_sweep(n: int, budget: Budget, quick: bool, log):
    """Product tiles and epilogue column tiles of the Pallas kernel, forward, outgoing, at one N."""
    rows = []
    for t in SWEEP[:2] if quick else SWEEP:
        tag = (
            f" bm{t.bm} bn{t.bn} bk{t.bk} w{t.num_warps} s{t.num_stages} bj{t.bj} er{t.epilogue_rows}"
            f" ew{t.epilogue_warps}"
        )
        for r in bench_core([n], budget, quick, log, impls=("pallas",), tiles=t, modes=("fwd",)):
            r["kind"] = "sweep"
            r["impl"] = "pallas" + tag
            rows.append(r)
    return rows


def add_ratios(rows):
    base = {
        (r["kind"], r["n"], r["direction"], r["mode"]): r["time_ms"]
        for r in rows
        if r.get("impl") == "xla" and "time_ms" in r
    }
    for r in rows:
        kind = "core" if r["kind"] == "sweep" else r["kind"]  # sweep rows: against the core XLA row
        b = base.get((kind, r.get("n"), r.get("direction"), r.get("mode")))
        if b and "time_ms" in r:
            r["speedup_vs_xla"] = b / r["time_ms"]
        if "time_ms" in r and r.get("tflop"):
            r["tflops"] = r["tflop"] / (r["time_ms"] * 1e-3)


def print_table(rows, device):
    print_header(
        f"# triangle multiplication / Evoformer block / transition on {device['device_kind']}",
        f"{'kind':16} {'N':>5} {'dir':9} {'mode':8} {'impl':19} {'ms':>9} {'xla/x':>6} {'TF/s':>6} "
        f"{'temp GiB':>8} {'peak GiB':>8} {'|d| vs xla':>10}",
    )
    g = lambda b: f"{b / 2**30:8.2f}" if isinstance(b, (int, float)) else f"{'-':>8}"  # noqa: E731
    for r in rows:
        if "time_ms" not in r:
            print(
                f"{r['kind']:16} {r.get('n', ''):>5} {r.get('direction', ''):9} {r.get('mode', ''):8} "
                f"{r.get('impl', ''):19} {r.get('error', '')}"
            )
            continue
        sp = f"{r['speedup_vs_xla']:6.2f}" if "speedup_vs_xla" in r else f"{'-':>6}"
        tf = f"{r['tflops']:6.1f}" if "tflops" in r else f"{'-':>6}"
        d = f"{r['max_abs_diff_vs_xla']:10.3g}" if "max_abs_diff_vs_xla" in r else f"{'-':>10}"
        print(
            f"{r['kind']:16} {r.get('n', ''):>5} {r.get('direction', ''):9} {r['mode']:8} {r['impl']:19} "
            f"{r['time_ms']:9.3f} {sp} {tf} {g(r.get('temp_bytes'))} {g(r.get('peak_bytes'))} {d}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU / interpret-mode smoke run)")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 256,1024,2048; quick: 16)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting rows after this (default 300)")
    ap.add_argument("--skip", default="", help="comma-separated: module,block,core,transition,sweep")
    ap.add_argument("--out", default=None, help="JSON file or folder (default bench/results/)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("16" if args.quick else "256,1024,2048")).split(",")]
    skip = set(filter(None, args.skip.split(",")))
    budget = Budget(args.budget_s if args.budget_s is not None else (900.0 if args.quick else 300.0))
    device = device_info()

    def log(msg):
        print(f"[{budget.elapsed():6.1f}s] {msg}", flush=True)

    log(f"jax {jax.__version__} on {device['device_kind']}; pallas interpret={_compat.resolve_interpret(None)}")
    rows = []
    # The must-have rows first (the budget skips whatever is left at the end).
    if "module" not in skip:
        rows += bench_module(sizes, budget, args.quick, log)
    if "block" not in skip:
        for r in bench_evoformer_block(budget, args.quick, ["bf16"], log):
            r.update(n=r.pop("shape", ""), direction="", kind="evoformer_block")
            r.pop("case", None)
            rows.append(r)
    if "core" not in skip:
        rows += bench_core(sizes, budget, args.quick, log)
    if "transition" not in skip:
        rows += bench_transition(sizes[:2], budget, args.quick, log)
    if "sweep" not in skip:
        rows += bench_sweep(sizes[min(1, len(sizes) - 1)], budget, args.quick, log)
    add_ratios(rows)
    print_table(rows, device)
    result = {
        "commit": commit(),
        "device": device,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version(),
        "python": platform.python_version(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "pallas_interpret": _compat.resolve_interpret(None),
        "elapsed_s": round(budget.elapsed(), 1),
        "rows": rows,
    }
    write_results(
        args.out,
        "triangle_multiplication",
        result,
        suffix="-quick" if args.quick else "",
        note=f" ({budget.elapsed():.0f}s)",
    )
    return result


if __name__ == "__main__":
    main()
