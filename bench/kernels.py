"""Benchmark the fused Pallas kernels (attention, LayerNorm) against plain XLA and cuDNN.

    python -m bench.kernels               # on a GPU: full run (~5 min on an H200), table + JSON
    python -m bench.kernels --quick       # tiny shapes, CPU-friendly (Pallas interpret mode) smoke run
    python -m bench.kernels --only sweep  # Pallas attention tile/launch sweep only (~2 min on an H200)

For every case and dtype (float32, bf16) and mode (forward, forward+backward) it records, per
implementation ('pallas' = pallas_kernels, 'xla' = jaxfold's attention_core / layer_norm math in jnp,
'cudnn' = jax.nn.dot_product_attention(implementation='cudnn'), attention only):

* time: median over >= 5 samples after ~0.25 s of warm-up calls (the GPU clocks down while the host
  compiles), each sample the mean of `inner` back-to-back calls ending in
  `block_until_ready` (inner is chosen so a sample lasts >= ~2 ms, which hides dispatch overhead);
* temp memory: `compiled.memory_analysis().temp_size_in_bytes` (XLA scratch, e.g. the [B, H, Q, K] logits);
* throughput: attention in model TFLOP/s (matmul FLOPs 2*B*H*Q*K*(C+Cv) forward, backward counted as
  2.5x forward, the FlashAttention convention); LayerNorm in GB/s of compulsory traffic (forward: read x,
  write y; forward+backward adds read x, read dy, write dx);
* error: max |result - reference| where the reference is float32 math at 'highest' matmul precision on the
  same inputs (inputs are drawn once and rounded to bf16-representable values, so fp32 and bf16 runs see
  the same numbers); for forward+backward the errors of every gradient are recorded too.

Float32 runs use the default matmul precision (TF32 on GPU for XLA, cuDNN and the Pallas kernel alike).
Every measurement is guarded: failures (unsupported shapes, OOM) are recorded as strings, and a global time
budget (--budget-s) skips whatever is left rather than overrunning.

Writes bench/results/kernels-<device>-<UTC stamp>.json with the git commit (`git rev-parse HEAD` or
$JAXFOLD_COMMIT), device, jax version and all numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import time
import traceback

import jax
import jax.numpy as jnp

from bench._common import (
    Budget,
    commit,
    compile_with_temp,
    device_info,
    device_kernel_profile,
    jaxlib_version,
    print_header,
    short_error,
    time_compiled,
    write_results,
)
from pallas_kernels import _compat
from pallas_kernels import attention as pattn
from pallas_kernels import layer_norm as pln

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


# ------------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AttnCase:
    name: str
    b: int
    q: int
    k: int
    h: int
    c: int
    pair: bool

    def shape_str(self):
        return f"B={self.b} Q={self.q} K={self.k} H={self.h} C={self.c}" + (" +pair" if self.pair else "")

    def fwd_flops(self):
        return 2.0 * self.b * self.h * self.q * self.k * (self.c + self.c)


@dataclasses.dataclass
class LNCase:
    name: str
    shape: tuple

    def shape_str(self):
        return "x".join(map(str, self.shape))


def attention_cases(quick: bool):
    if quick:
        return [
            AttnCase("msa_row", 4, 40, 40, 2, 32, True),
            AttnCase("msa_col", 8, 24, 24, 2, 32, False),
            AttnCase("triangle", 6, 24, 24, 2, 32, True),
            AttnCase("extra_msa_row", 4, 32, 32, 2, 8, True),
        ]
    return [
        # (N_seq x N_res): MSA row attention, B=N_seq, Q=K=N_res, pair bias.
        AttnCase("msa_row 128x256", 128, 256, 256, 8, 32, True),
        AttnCase("msa_row 512x1024", 512, 1024, 1024, 8, 32, True),
        # MSA column attention, B=N_res, Q=K=N_seq, no pair bias.
        AttnCase("msa_col 128x256", 256, 128, 128, 8, 32, False),
        AttnCase("msa_col 512x1024", 1024, 512, 512, 8, 32, False),
        # Triangle attention (starting/ending node), B=N_res, Q=K=N_res, H=4, pair bias.
        AttnCase("triangle 256", 256, 256, 256, 4, 32, True),
        AttnCase("triangle 768", 768, 768, 768, 4, 32, True),
        # Extra-MSA row attention: head dim 8, H=8, (N_extra=1024 x N_res=256), pair bias.
        AttnCase("extra_msa_row 1024x256", 1024, 256, 256, 8, 8, True),
        # A length that is not a multiple of any tile (masked tails, nothing padded in memory).
        AttnCase("msa_row 128x300 ragged", 128, 300, 300, 8, 32, True),
    ]


def ln_cases(quick: bool):
    if quick:
        return [LNCase("pair", (16, 16, 128)), LNCase("msa", (8, 16, 256)), LNCase("odd384", (5, 7, 384))]
    return [
        LNCase("pair 256", (256, 256, 128)),
        LNCase("pair 768", (768, 768, 128)),
        LNCase("msa 512x1024", (512, 1024, 256)),
    ]


# ------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------


def _copy_forward_errors(rows):
    """A forward row's output error is that of the fwd+bwd run of the same impl/dtype (which computes it)."""
    for r in rows:
        if r["mode"] == "fwd" and "err_out" not in r:
            twin = next(
                (x for x in rows if x["mode"] == "fwd+bwd" and x["impl"] == r["impl"] and x["dtype"] == r["dtype"]),
                None,
            )
            if twin is not None and "err_out" in twin:
                r["err_out"] = twin["err_out"]


def _max_abs(a, b):
    if a is None or b is None:
        return None
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


# ------------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------------


def _attention_inputs(case: AttnCase, seed: int = 0):
    """float32 arrays with bf16-representable values, plus the AlphaFold mask bias and key lengths."""
    ks = jax.random.split(jax.random.key(seed), 6)
    rb = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    q = rb(jax.random.normal(ks[0], (case.b, case.q, case.h, case.c)) * case.c**-0.5)
    k = rb(jax.random.normal(ks[1], (case.b, case.k, case.h, case.c)))
    v = rb(jax.random.normal(ks[2], (case.b, case.k, case.h, case.c)))
    # Padding-style key masks (a valid prefix of 90-100% of the keys), as AlphaFold's masks are; every row
    # keeps >= 1 key, so AlphaFold's additive mask and cuDNN's sequence-length mask agree exactly.
    lens = jax.random.randint(ks[3], (case.b,), max(1, int(0.9 * case.k)), case.k + 1).astype(jnp.int32)
    keep = (jnp.arange(case.k)[None, :] < lens[:, None]).astype(jnp.float32)
    bias = (1e9 * (keep - 1.0))[:, None, None, :]
    pb = rb(jax.random.normal(ks[4], (case.h, case.q, case.k))) if case.pair else None
    do = rb(jax.random.normal(ks[5], (case.b, case.q, case.h, case.c)))
    return dict(q=q, k=k, v=v, bias=bias, pb=pb, do=do, lens=lens)


XLA_SOURCE = {}


def _model_fn(kind: str):
    """jaxfold's own XLA path (attention_core / layer_norm with kernels='xla'); if the model package cannot
    be imported (e.g. a half-edited tree), the identical jnp math from pallas_kernels, recorded in the JSON."""
    try:
        if kind == "attention":
            from jaxfold.model.attention import attention_core  # noqa: PLC0415

            XLA_SOURCE[kind] = "jaxfold.model.attention.attention_core(kernels='xla')"
            return lambda q, k, v, bias, pb: attention_core(q, k, v, bias, pb, kernels="xla")
        from jaxfold.model.primitives import layer_norm  # noqa: PLC0415

        XLA_SOURCE[kind] = "jaxfold.model.primitives.layer_norm(kernels='xla')"
        return lambda x, s, o, eps: layer_norm(x, s, o, eps, kernels="xla")
    except Exception as e:  # noqa: BLE001
        XLA_SOURCE[kind] = f"pallas_kernels reference (jaxfold import failed: {short_error(e)})"
        print(f"warning: {XLA_SOURCE[kind]}")
        return pattn.attention_reference if kind == "attention" else pln.layer_norm_reference


def _attention_impls():
    attention_core = _model_fn("attention")

    def pallas(q, k, v, bias, pb, lens):
        return pattn.attention(q, k, v, bias, pb)

    def xla(q, k, v, bias, pb, lens):
        return attention_core(q, k, v, bias, pb)

    def cudnn(q, k, v, bias, pb, lens):
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=None if pb is None else pb[None],
            scale=1.0,
            key_value_seq_lengths=lens,
            implementation="cudnn",
        )

    return {"pallas": pallas, "xla": xla, "cudnn": cudnn}


def _attention_fns(impl, has_pair: bool):
    """fwd(q, k, v, bias, pb, lens) and fwdbwd(q, k, v, bias, pb, lens, do) -> (out, grads)."""

    def fwd(q, k, v, bias, pb, lens):
        return impl(q, k, v, bias, pb, lens)

    def fwdbwd(q, k, v, bias, pb, lens, do):
        if has_pair:
            out, vjp = jax.vjp(lambda q, k, v, pb: impl(q, k, v, bias, pb, lens), q, k, v, pb)
        else:
            out, vjp = jax.vjp(lambda q, k, v: impl(q, k, v, bias, None, lens), q, k, v)
        return out, vjp(do.astype(out.dtype))

    return fwd, fwdbwd


def bench_attention(case: AttnCase, budget: Budget, quick: bool, impl_names, dtypes, log):
    rows = []
    base = _attention_inputs(case)
    impls = _attention_impls()
    # Reference: float32, 'highest' matmul precision, jnp math.
    ref = None
    try:
        _, ref_fb = _attention_fns(impls["xla"], case.pair)
        with jax.default_matmul_precision("highest"):
            ref_c, _ = compile_with_temp(
                ref_fb, (base["q"], base["k"], base["v"], base["bias"], base["pb"], base["lens"], base["do"])
            )
            ref = jax.block_until_ready(
                ref_c(base["q"], base["k"], base["v"], base["bias"], base["pb"], base["lens"], base["do"])
            )
        del ref_c
    except Exception as e:  # noqa: BLE001
        log(f"  reference failed: {short_error(e)}")
    grad_names = ["dq", "dk", "dv"] + (["dpair"] if case.pair else [])
    for dname in dtypes:
        dt = DTYPES[dname]
        cast = lambda x: None if x is None else x.astype(dt)  # noqa: E731
        args = (cast(base["q"]), cast(base["k"]), cast(base["v"]), base["bias"], cast(base["pb"]), base["lens"])
        do = cast(base["do"])
        for iname in impl_names:
            fwd, fwdbwd = _attention_fns(impls[iname], case.pair)
            for mode in ("fwd", "fwd+bwd"):
                row = dict(kind="attention", case=case.name, shape=case.shape_str(), dtype=dname, mode=mode, impl=iname)
                rows.append(row)
                if budget.left() <= 0:
                    row["error"] = "skipped: time budget"
                    continue
                t_start = time.perf_counter()
                try:
                    f, a = (fwd, args) if mode == "fwd" else (fwdbwd, args + (do,))
                    compiled, temp = compile_with_temp(f, a)
                    row["temp_bytes"] = temp
                    sec, meta = time_compiled(compiled, a, quick)
                    row.update(time_ms=sec * 1e3, **meta)
                    flops = case.fwd_flops() * (1.0 if mode == "fwd" else 3.5)
                    row["tflops"] = flops / sec / 1e12
                    if ref is not None and mode == "fwd+bwd":
                        out, grads = compiled(*a)
                        row["err_out"] = _max_abs(out, ref[0])
                        row["err_grads"] = {n: _max_abs(g, r) for n, g, r in zip(grad_names, grads, ref[1])}
                        row["ref_max_abs"] = {
                            "out": float(jnp.max(jnp.abs(ref[0]))),
                            **{n: float(jnp.max(jnp.abs(r))) for n, r in zip(grad_names, ref[1])},
                        }
                        del out, grads
                    del compiled
                except Exception as e:  # noqa: BLE001
                    row["error"] = ("unsupported: " if iname == "cudnn" else "") + short_error(e)
                    if os.environ.get("JAXFOLD_BENCH_TRACEBACK"):
                        traceback.print_exc()
                row["wall_s"] = round(time.perf_counter() - t_start, 2)
                log("  " + _fmt_row(row))
                gc.collect()
    _copy_forward_errors(rows)
    del ref, base
    gc.collect()
    return rows


# ------------------------------------------------------------------------------------------------------
# LayerNorm
# ------------------------------------------------------------------------------------------------------


def bench_layer_norm(case: LNCase, budget: Budget, quick: bool, dtypes, log):
    model_layer_norm = _model_fn("layer_norm")
    rows = []
    ks = jax.random.split(jax.random.key(1), 4)
    rb = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    c = case.shape[-1]
    x0 = rb(jax.random.normal(ks[0], case.shape) * 2.0 + 0.5)
    scale = 1.0 + 0.1 * jax.random.normal(ks[1], (c,))
    offset = 0.1 * jax.random.normal(ks[2], (c,))
    dy0 = rb(jax.random.normal(ks[3], case.shape))
    impls = {
        "pallas": lambda x, s, o: pln.layer_norm(x, s, o, 1e-5),
        "xla": lambda x, s, o: model_layer_norm(x, s, o, 1e-5),
    }

    def fwdbwd_of(fn):
        def f(x, s, o, dy):
            y, vjp = jax.vjp(fn, x, s, o)
            return y, vjp(dy)

        return f

    ref = None
    try:
        ref = jax.jit(fwdbwd_of(impls["xla"]))(x0, scale, offset, dy0)
    except Exception as e:  # noqa: BLE001
        log(f"  reference failed: {short_error(e)}")
    n_el = math.prod(case.shape)
    for dname in dtypes:
        dt = DTYPES[dname]
        x, dy = x0.astype(dt), dy0.astype(dt)
        item = jnp.dtype(dt).itemsize
        for iname, fn in impls.items():
            for mode in ("fwd", "fwd+bwd"):
                row = dict(
                    kind="layer_norm", case=case.name, shape=case.shape_str(), dtype=dname, mode=mode, impl=iname
                )
                rows.append(row)
                if budget.left() <= 0:
                    row["error"] = "skipped: time budget"
                    continue
                t_start = time.perf_counter()
                try:
                    f, a = (fn, (x, scale, offset)) if mode == "fwd" else (fwdbwd_of(fn), (x, scale, offset, dy))
                    compiled, temp = compile_with_temp(f, a)
                    row["temp_bytes"] = temp
                    sec, meta = time_compiled(compiled, a, quick)
                    row.update(time_ms=sec * 1e3, **meta)
                    nbytes = n_el * item * (2 if mode == "fwd" else 5)
                    row["gbps"] = nbytes / sec / 1e9
                    if ref is not None and mode == "fwd+bwd":
                        y, grads = compiled(*a)
                        row["err_out"] = _max_abs(y, ref[0])
                        row["err_grads"] = {
                            n: _max_abs(g, r) for n, g, r in zip(["dx", "dscale", "doffset"], grads, ref[1])
                        }
                    del compiled
                except Exception as e:  # noqa: BLE001
                    row["error"] = short_error(e)
                    if os.environ.get("JAXFOLD_BENCH_TRACEBACK"):
                        traceback.print_exc()
                row["wall_s"] = round(time.perf_counter() - t_start, 2)
                log("  " + _fmt_row(row))
                gc.collect()
    _copy_forward_errors(rows)
    return rows


# ------------------------------------------------------------------------------------------------------
# Block-size sweep (forward and backward tiles of the attention kernel)
# ------------------------------------------------------------------------------------------------------


FWD_SWEEP = [
    dict(),  # the defaults
    dict(block_q=128, block_k=64),
    dict(block_q=128, block_k=32),
    dict(block_q=64, block_k=32),
    dict(num_warps=8),
    dict(num_stages=4),
    dict(num_stages=2),
]
BWD_SWEEP = [
    dict(),  # the defaults
    dict(bwd_blocks=dict(dkdv_q=32, dkdv_k=128)),
    dict(bwd_blocks=dict(dkdv_q=64, dkdv_k=128)),
    dict(bwd_blocks=dict(dkdv_q=32, dkdv_k=64)),
    dict(bwd_blocks=dict(dq_q=128, dq_k=32)),
    dict(bwd_blocks=dict(dq_q=128, dq_k=64)),
    dict(bwd_blocks=dict(dq_q=64, dq_k=32)),
    dict(bwd_blocks=dict(dp_q=128, dp_k=64)),
    dict(bwd_blocks=dict(dp_q=64, dp_k=128)),
    dict(bwd_blocks=dict(dp_q=32, dp_k=64)),
    dict(num_stages_bwd=4),
    dict(num_warps_bwd=8),
]


def sweep_attention(cases, budget: Budget, quick: bool, log):
    """bf16 tile/launch sweep of the Pallas attention: forward configs timed forward-only, backward
    configs timed forward+backward (with the default forward)."""
    rows = []
    fwd_cfgs, bwd_cfgs = (FWD_SWEEP[:2], BWD_SWEEP[:2]) if quick else (FWD_SWEEP, BWD_SWEEP)
    for case in cases:
        base = _attention_inputs(case)
        bf = lambda x: None if x is None else x.astype(jnp.bfloat16)  # noqa: E731
        args = (bf(base["q"]), bf(base["k"]), bf(base["v"]), base["bias"], bf(base["pb"]), base["lens"])
        do = bf(base["do"])
        for mode, cfgs in (("fwd", fwd_cfgs), ("fwd+bwd", bwd_cfgs)):
            for cfg in cfgs:
                if budget.left() <= 0:
                    break
                impl = lambda q, k, v, bias, pb, lens, cfg=cfg: pattn.attention(q, k, v, bias, pb, **cfg)  # noqa: E731
                fwd, fwdbwd = _attention_fns(impl, case.pair)
                row = dict(kind="sweep", case=case.name, shape=case.shape_str(), dtype="bf16", mode=mode, config=cfg)
                try:
                    f, a = (fwd, args) if mode == "fwd" else (fwdbwd, args + (do,))
                    compiled, _ = compile_with_temp(f, a)
                    sec, _ = time_compiled(compiled, a, quick)
                    row["time_ms"] = sec * 1e3
                    del compiled
                except Exception as e:  # noqa: BLE001
                    row["error"] = short_error(e)
                rows.append(row)
                ms = row.get("time_ms", float("nan"))
                log(f"  sweep {case.name:24s} {mode:7s} {json.dumps(cfg):85s} {ms:8.3f} ms  {row.get('error', '')}")
            ok = [r for r in rows if r["case"] == case.name and r["mode"] == mode and "time_ms" in r]
            if ok:
                best = min(ok, key=lambda r: r["time_ms"])
                log(
                    f"  best {mode} for {case.name}: {json.dumps(best['config'])} {best['time_ms']:.3f} ms "
                    f"(default {ok[0]['time_ms']:.3f} ms)"
                )
        gc.collect()
    return rows


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------


def bench_copy_ceiling(budget: Budget, quick: bool, log):
    """Measured device copy bandwidth (read + write of a large buffer): the ceiling LayerNorm GB/s is judged by."""
    n = (1 << 16) if quick else (1 << 28)  # 1 GiB of float32 on a GPU
    x = jnp.ones((n,), jnp.float32)
    compiled, _ = compile_with_temp(lambda a: a * 1.0001, (x,))
    seconds, meta = time_compiled(compiled, (x,), quick)
    gbps = 2 * x.nbytes / seconds / 1e9
    log(f"copy ceiling: {gbps:.0f} GB/s")
    return {
        "kind": "copy_ceiling",
        "case": "copy_ceiling",
        "shape": f"{n}",
        "dtype": "fp32",
        "mode": "fwd",
        "impl": "xla",
        "bytes": 2 * x.nbytes,
        "time_ms": seconds * 1e3,
        "gbps": gbps,
        **meta,
    }


EVOFORMER_PARTS = (
    "msa_row_attention_with_pair_bias",
    "msa_column_attention",
    "msa_transition",
    "outer_product_mean",
    "triangle_multiplication_outgoing",
    "triangle_multiplication_incoming",
    "triangle_attention_starting_node",
    "triangle_attention_ending_node",
    "pair_transition",
)


def print_profile(title: str, profile: dict) -> None:
    """The device time of one call by sub-module (forward and backward apart) and the top kernels."""
    if "error" in profile:
        print(f"profile {title}: {profile['error']}")
        return
    print(f"\nprofile {title}: {profile['total_ms']:.3f} ms of device kernels per call")
    for label, ms in profile["by_label"].items():
        print(f"  {label:44s} {ms:8.3f} ms  {100 * ms / profile['total_ms']:5.1f}%")
    print("  top kernels (ms per call, launches per call):")
    for name, label, ms, n in profile["top"][:25]:
        print(f"    {ms:8.3f} {n:4d}  {label:40s} {name[:90]}")


def _block_inputs(n_seq: int, n_res: int, jdt):
    """The Evoformer block's inputs: msa `[n_seq, n_res, 256]`, pair `[n_res, n_res, 128]` (random), all-ones masks."""
    key = jax.random.PRNGKey(0)
    msa = jax.random.normal(key, (n_seq, n_res, 256), jdt)
    pair = jax.random.normal(key, (n_res, n_res, 128), jdt)
    return msa, pair, jnp.ones((n_seq, n_res), jdt), jnp.ones((n_res, n_res), jdt)


def bench_evoformer_block(budget: Budget, quick: bool, dtypes, log, profile: bool = False):
    """One full-size Evoformer block (N_seq 128, N_res 256) forward+backward, kernels='pallas' vs 'xla'."""

    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.evoformer import EvoformerIteration  # noqa: PLC0415

    n_seq, n_res = (8, 16) if quick else (128, 256)
    rows = []
    for dtype in dtypes:
        jdt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        key = jax.random.PRNGKey(0)
        msa, pair, msa_mask, pair_mask = _block_inputs(n_seq, n_res, jdt)
        params = None
        results = {}
        for kernels in ("xla", "pallas"):
            if budget.left() <= 0:
                rows.append(
                    {
                        "kind": "evoformer_block",
                        "case": "evoformer_block",
                        "shape": "",
                        "dtype": dtype,
                        "mode": "fwd+bwd",
                        "impl": kernels,
                        "error": "skipped: budget",
                    }
                )
                continue
            cfg = model_config(
                "model_1_ptm", kernels=kernels, dtype="bfloat16" if dtype == "bf16" else "float32", zero_init=False
            )
            block = EvoformerIteration(cfg.model.embeddings_and_evoformer.evoformer, cfg.model.global_config)
            if params is None:
                params = block.init(key, (msa, pair), msa_mask, pair_mask)

            def loss(p, msa, pair, block=block):
                (m, z), _ = block.apply(p, (msa, pair), msa_mask, pair_mask)
                return jnp.sum(m.astype(jnp.float32) ** 2) + jnp.sum(z.astype(jnp.float32) ** 2)

            fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
            row = {
                "kind": "evoformer_block",
                "case": "evoformer_block",
                "shape": f"N_seq={n_seq} N_res={n_res}",
                "dtype": dtype,
                "mode": "fwd+bwd",
                "impl": kernels,
            }
            try:
                compiled, temp = compile_with_temp(fn, (params, msa, pair))
                seconds, meta = time_compiled(compiled, (params, msa, pair), quick)
                row.update(time_ms=seconds * 1e3, temp_bytes=temp, **meta)
                results[kernels] = compiled(params, msa, pair)
                if profile:
                    try:
                        row["profile"] = device_kernel_profile(compiled, (params, msa, pair), labels=EVOFORMER_PARTS)
                    except Exception as e:  # noqa: BLE001  (the profile is extra: the timing stands)
                        row["profile"] = {"error": short_error(e)}
                    print_profile(f"evoformer block {dtype} {kernels}", row["profile"])
            except Exception as e:  # noqa: BLE001  (record, keep going)
                row["error"] = short_error(e)
            rows.append(row)
            log(f"evoformer block {dtype} {kernels}: {row.get('time_ms', row.get('error'))}")
        if len(results) == 2:
            (loss_x, _), (loss_p, _) = results["xla"], results["pallas"]
            for r in rows[-2:]:
                r["loss_rel_diff"] = float(abs(loss_p - loss_x) / abs(loss_x))
    return rows


def bench_evoformer_parts(budget: Budget, quick: bool, dtypes, log):
    """Each sub-module of the Evoformer block (N_seq 128, N_res 256) alone, forward+backward, kernels='pallas'
    vs 'xla': where the block's time goes. The residual add and the loss are included in every part (as in
    the block); the parts' sum differs from the block by what XLA overlaps or fuses across them."""

    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.msa_attention import MSAColumnAttention, MSARowAttentionWithPairBias  # noqa: PLC0415
    from jaxfold.model.outer_product_mean import OuterProductMean  # noqa: PLC0415
    from jaxfold.model.transition import Transition  # noqa: PLC0415
    from jaxfold.model.triangle_attention import TriangleAttention  # noqa: PLC0415
    from jaxfold.model.triangle_multiplication import TriangleMultiplication  # noqa: PLC0415
    from jaxfold.parallel.dap import NO_DAP  # noqa: PLC0415

    n_seq, n_res = (8, 16) if quick else (128, 256)
    rows = []
    for dtype in dtypes:
        jdt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        key = jax.random.PRNGKey(0)
        msa, pair, msa_mask, pair_mask = _block_inputs(n_seq, n_res, jdt)
        for kernels in ("xla", "pallas"):
            cfg = model_config(
                "model_1_ptm", kernels=kernels, dtype="bfloat16" if dtype == "bf16" else "float32", zero_init=False
            )
            c, gc = cfg.model.embeddings_and_evoformer.evoformer, cfg.model.global_config

            def pair_part(module_cls, name, c=c, gc=gc):
                """A pair update called as `module(pair, pair_mask)` (the triangle ops)."""
                return (name, module_cls(c[name], gc, NO_DAP), "pair", lambda mod, m, z: mod(z, pair_mask))

            # (name, module, the activation it updates ("msa"/"pair"), its call on (msa, pair))
            parts = [
                (
                    "msa_row_attention_with_pair_bias",
                    MSARowAttentionWithPairBias(c.msa_row_attention_with_pair_bias, gc, NO_DAP),
                    "msa",
                    lambda mod, m, z: mod(m, msa_mask, z),
                ),
                (
                    "msa_column_attention",
                    MSAColumnAttention(c.msa_column_attention, gc),
                    "msa",
                    lambda mod, m, z: mod(m, msa_mask),
                ),
                ("msa_transition", Transition(c.msa_transition, gc), "msa", lambda mod, m, z: mod(m, msa_mask)),
                (
                    "outer_product_mean",
                    OuterProductMean(c.outer_product_mean, gc, num_output_channel=128),
                    "pair",
                    lambda mod, m, z: mod(m, msa_mask, msa_mask),
                ),
                pair_part(TriangleMultiplication, "triangle_multiplication_outgoing"),
                pair_part(TriangleMultiplication, "triangle_multiplication_incoming"),
                pair_part(TriangleAttention, "triangle_attention_starting_node"),
                pair_part(TriangleAttention, "triangle_attention_ending_node"),
                ("pair_transition", Transition(c.pair_transition, gc), "pair", lambda mod, m, z: mod(z, pair_mask)),
            ]
            for name, module, target, call in parts:
                row = {
                    "kind": "evoformer_part",
                    "case": name,
                    "shape": f"N_seq={n_seq} N_res={n_res}",
                    "dtype": dtype,
                    "mode": "fwd+bwd",
                    "impl": kernels,
                }
                if budget.left() <= 0:
                    row["error"] = "skipped: budget"
                    rows.append(row)
                    continue
                try:
                    params = module.init(key, msa, pair, method=lambda mod, m, z, call=call: call(mod, m, z))

                    def loss(p, m, z, module=module, call=call, target=target):
                        update = module.apply(p, m, z, method=lambda mod, m, z: call(mod, m, z))
                        out = (m if target == "msa" else z) + update
                        return jnp.sum(out.astype(jnp.float32) ** 2)

                    fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
                    compiled, temp = compile_with_temp(fn, (params, msa, pair))
                    seconds, meta = time_compiled(compiled, (params, msa, pair), quick)
                    row.update(time_ms=seconds * 1e3, temp_bytes=temp, **meta)
                except Exception as e:  # noqa: BLE001  (record, keep going)
                    row["error"] = short_error(e)
                rows.append(row)
                log(f"evoformer part {name} {dtype} {kernels}: {row.get('time_ms', row.get('error'))}")
    return rows


def in_place_pair_copies(quick: bool, dtypes, log):
    """Compile-only check of the in-place (chunked inference) Evoformer block: pair-shaped copies in the compiled
    program (other than zero-filled buffers) mean a slice loop kept the old pair beside the new one. The CPU
    compiler copies in bf16 (tests/test_in_place_buffers.py); this row says what the GPU compiler does."""
    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.evoformer import EvoformerIteration  # noqa: PLC0415
    from jaxfold.model.inplace import copies_in_compiled  # noqa: PLC0415

    n_seq, n_res, chunk = (8, 32, 8) if quick else (128, 256, 64)
    rows = []
    for dtype in dtypes:
        jdt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        cfg = model_config("model_1_ptm", dtype="bfloat16" if dtype == "bf16" else "float32", zero_init=False)
        cfg = cfg.replace(**{"model.global_config.chunk_size": chunk})
        block = EvoformerIteration(cfg.model.embeddings_and_evoformer.evoformer, cfg.model.global_config)
        msa, pair, *masks = _block_inputs(n_seq, n_res, jdt)
        params = block.init(jax.random.PRNGKey(0), (msa, pair), *masks)
        apply = jax.jit(
            lambda p, m, z, block=block, masks=masks: block.apply(p, (m, z), *masks)[0], donate_argnums=(1, 2)
        )
        text = apply.lower(params, msa, pair).compile().as_text()
        copies = copies_in_compiled(text, f"{'bf16' if dtype == 'bf16' else 'f32'}[{n_res},{n_res},128]")
        rows.append(
            {
                "kind": "in_place_copies",
                "case": "in-place block pair copies",
                "shape": f"N_seq={n_seq} N_res={n_res} chunk={chunk}",
                "dtype": dtype,
                "mode": "compile",
                "impl": str(cfg.model.global_config.kernels),
                "pair_copies": len(copies),
                "copied": copies[:10],
                "error": f"{len(copies)} pair-sized copies: {', '.join(copies[:4])}" if copies else "none",
            }
        )
        log(f"in-place block {dtype}: {len(copies)} pair-sized copies {copies[:4]}")
    return rows


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _fmt_row(r):
    if "error" in r:
        tail = r["error"]
    else:
        thr = f"{_fmt(r.get('tflops'), '7.1f')} TF/s" if "tflops" in r else f"{_fmt(r.get('gbps'), '7.0f')} GB/s"
        grads = r.get("err_grads") or {}
        gerr = max((g for g in grads.values() if g is not None), default=None)
        temp = r.get("temp_bytes")
        temp_mib = temp / 2**20 if temp is not None else None
        tail = (
            f"{_fmt(r.get('time_ms'), '9.3f')} ms {thr}  temp {_fmt(temp_mib, '9.1f')} MiB"
            f"  err out {_fmt(r.get('err_out'), '.2e')} grads {_fmt(gerr, '.2e')}"
        )
    return f"{r['case']:32s} {r['dtype']:4s} {r['mode']:7s} {r['impl']:6s} {tail}"


def print_table(rows, device):
    print_header(
        f"device: {device['device_kind']} ({device['platform']}), jax {jax.__version__}",
        f"{'case':32s} {'shape':36s} {'dtype':5s} {'mode':7s} {'impl':6s} {'time ms':>9s} {'vs xla':>7s} "
        f"{'TF/s|GB/s':>9s} {'temp MiB':>9s} {'err out':>8s} {'err grad':>8s}",
    )
    for r in rows:
        if r["kind"] == "sweep":
            continue
        xla = next(
            (
                x
                for x in rows
                if x["kind"] == r["kind"]
                and x["case"] == r["case"]
                and x["dtype"] == r["dtype"]
                and x["mode"] == r["mode"]
                and x["impl"] == "xla"
            ),
            None,
        )
        if "error" in r:
            print(f"{r['case']:32s} {r['shape']:36s} {r['dtype']:5s} {r['mode']:7s} {r['impl']:6s} {r['error'][:80]}")
            continue
        ratio = (xla["time_ms"] / r["time_ms"]) if xla and "time_ms" in xla and r.get("time_ms") else None
        r["speedup_vs_xla"] = ratio
        thr = r.get("tflops", r.get("gbps"))
        temp = r.get("temp_bytes")
        grads = r.get("err_grads") or {}
        gerr = max((g for g in grads.values() if g is not None), default=None)
        print(
            f"{r['case']:32s} {r['shape']:36s} {r['dtype']:5s} {r['mode']:7s} {r['impl']:6s} "
            f"{_fmt(r.get('time_ms'), '9.3f')} {(_fmt(ratio, '6.2f') + 'x') if ratio else '      -'} "
            f"{_fmt(thr, '9.1f')} {_fmt(temp / 2**20 if temp is not None else None, '9.1f')} "
            f"{_fmt(r.get('err_out'), '8.1e')} {_fmt(gerr, '8.1e')}"
        )
    print(
        "speedup 'vs xla' = XLA time / this time (higher is better). TF/s: model matmul FLOPs "
        "(bwd = 2.5x fwd). GB/s: compulsory bytes. err: max abs vs float32 'highest' reference."
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU / interpret-mode smoke run)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting new measurements after this many seconds (default 330; quick: 900)",
    )
    ap.add_argument(
        "--only",
        choices=["attention", "layer_norm", "block", "parts", "all", "sweep"],
        default="all",
        help="'sweep': only the Pallas attention tile sweep",
    )
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument(
        "--profile", action="store_true", help="block: also trace it and print device time per sub-module (GPU)"
    )
    ap.add_argument("--impls", default="pallas,xla,cudnn")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="also run a short Pallas tile sweep at the end (--only sweep: the full sweep alone)",
    )
    ap.add_argument(
        "--out", default=None, help="JSON file or folder (default bench/results/kernels-<device>-<UTC stamp>.json)"
    )
    args = ap.parse_args(argv)

    budget = Budget(args.budget_s if args.budget_s is not None else (900.0 if args.quick else 330.0))
    device = device_info()
    dtypes = [d for d in args.dtypes.split(",") if d]
    impl_names = [i for i in args.impls.split(",") if i]
    if not _compat.on_gpu() and "cudnn" in impl_names and not args.quick:
        print("note: no GPU backend: cuDNN rows will read 'unsupported'; Pallas runs in interpret mode")

    def log(msg):
        print(f"[{budget.elapsed():6.1f}s] {msg}", flush=True)

    log(
        f"jax {jax.__version__} on {device['device_kind']} ({device['platform']}); pallas interpret="
        f"{_compat.resolve_interpret(None)}; quick={args.quick}"
    )
    rows = []
    if args.only in ("attention", "all"):
        for case in attention_cases(args.quick):
            log(f"attention {case.name}: {case.shape_str()}")
            rows += bench_attention(case, budget, args.quick, impl_names, dtypes, log)
    ceiling = None
    if args.only in ("layer_norm", "all"):
        ceiling = bench_copy_ceiling(budget, args.quick, log)
        rows.append(ceiling)
        for case in ln_cases(args.quick):
            log(f"layer_norm {case.name}: {case.shape_str()}")
            rows += bench_layer_norm(case, budget, args.quick, dtypes, log)
    if ceiling is not None:
        for r in rows:
            if r.get("gbps") is not None and r is not ceiling:
                r["fraction_of_copy_ceiling"] = r["gbps"] / ceiling["gbps"]
    if args.only in ("block", "all"):
        rows += bench_evoformer_block(budget, args.quick, dtypes, log, profile=args.profile)
    if args.only in ("block", "parts", "all"):
        rows += bench_evoformer_parts(budget, args.quick, dtypes, log)
        rows += in_place_pair_copies(args.quick, dtypes, log)
    sweep = []
    if (args.sweep and args.only in ("attention", "all")) or args.only == "sweep":
        cases = attention_cases(args.quick)
        names = ["msa_row 128x256", "triangle 256", "extra_msa_row 1024x256"]
        if args.only == "sweep":
            names += ["msa_row 512x1024", "msa_col 512x1024", "triangle 768"]
        pick = cases[:1] if args.quick else [c for c in cases if c.name in names]
        log("block-size sweep (bf16)")
        sweep = sweep_attention(pick, budget, args.quick, log)

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
        "xla_baseline": XLA_SOURCE,
        "elapsed_s": round(budget.elapsed(), 1),
        "rows": rows,
        "sweep": sweep,
    }
    write_results(
        args.out, "kernels", result, suffix="-quick" if args.quick else "", note=f" ({budget.elapsed():.0f}s)"
    )
    return result


if __name__ == "__main__":
    main()
