"""How much device memory a prediction needs, and the chunk size that makes it fit (`chunk_size="auto"`).

A model of the peak, written down before compiling: the tensors that live through a whole pass (the pair
`[N, N, c_z]` and its recycled copy, the MSA `[N_seq, N, c_m]`, the extra MSA `[N_extra, N, c_e]`,
parameters, one recycling slice of the features) plus the largest temporary of any one op. Every op whose
temporaries grow with N_seq*N or N^2 is a loop over "rows" (MSA rows, columns, pair rows) when chunked, so
its temporary is `base + rows_in_flight * per_row`; unchunked, every row is in flight. For an op:

| op | rows | per row (XLA) | base |
| --- | --- | --- | --- |
| MSA row attention (main / extra) | N_seq / N_extra | logits H*N*N (f32, x2 for softmax) | LN(pair) + bias H*N*N |
| MSA column attention | N | H*N_seq^2 (f32, x2) | transposed + normed MSA |
| triangle attention | N | H*N*N (f32, x2) | LN(pair), a transposed pair, bias H*N*N |
| triangle multiplication | N | 3 rows of [N, c] | LN(pair) + both operands [N, N, c] |
| outer product mean | N, at most `outer_product_rows` | 2*N*c_o^2 + N*c_z (f32) | projections [N_seq, N, c_o] x2 |
| transitions | N (pair) / N_seq | 4*c*N | LN input |

With the fused Pallas attention the logits never exist (online softmax): its per-row cost is the
projected q, k, v, gate and output. The residual add holds one more copy of the updated tensor.
The estimate is deliberately simple and on the safe side; `bench/long_sequence.py` measures the truth.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from jaxfold.model.outer_product_mean import outer_product_rows

GIB = 1024**3
# The share of a GPU that a prediction lets JAX take (XLA_PYTHON_CLIENT_MEM_FRACTION, JAX's default 0.75), unless
# the user set one: see `claim_device_memory`.
DEVICE_MEMORY_FRACTION = "0.95"
# Fraction of the free device memory the estimate may use: XLA's allocator fragments, keeps a few
# buffers live across fusions, and the estimate is approximate.
DEFAULT_HEADROOM = 0.80
# An unchunked pass is chosen when its estimate is at most this fraction of the free memory,
UNCHUNKED_FRACTION = 0.125
# or when it fits and chunking would not save at least this share of it: slices of the pair cost time (bf16
# N=2,048 on an H100: 43.5 s in slices of 1,024, f142231; 37.3 s unchunked when the issue was filed), and at
# that length a chunk as long as the chain saves nothing, so auto ran slower for no memory gained.
MIN_CHUNK_SAVING = 0.25
# Candidate chunk sizes, largest first.
CHUNK_CANDIDATES = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


class ChainTooLongError(ValueError):
    """The prediction cannot fit in the device's memory at any chunk size."""


@dataclasses.dataclass(frozen=True)
class ModelShapes:
    """The shapes that set a prediction's memory: residues, MSA rows (templates' torsion rows included),
    extra MSA rows, templates."""

    num_res: int
    num_msa: int
    num_extra_msa: int
    num_templates: int

    @classmethod
    def from_features(cls, features, config) -> ModelShapes:
        """From processed features with a leading recycling axis (`msa_feat [R, N_seq, N, 49]`, ...)."""
        emb = config.model.embeddings_and_evoformer
        num_templ = (
            int(np.shape(features["template_aatype"])[1])
            if (emb.template.enabled and "template_aatype" in features)
            else 0
        )
        num_msa = int(np.shape(features["msa_feat"])[1])
        if emb.template.enabled and emb.template.embed_torsion_angles:
            num_msa += num_templ
        return cls(
            num_res=int(np.shape(features["aatype"])[-1]),
            num_msa=num_msa,
            num_extra_msa=int(np.shape(features["extra_msa"])[1]) if "extra_msa" in features else 0,
            num_templates=num_templ,
        )


def activation_bytes(config) -> int:
    """Bytes per element of the stored activations (the pair, the MSA): 2 in bf16, 4 in fp32."""
    return 2 if config.model.global_config.dtype == "bfloat16" else 4


def pair_bytes(shapes: ModelShapes, config, dap_size: int = 1) -> float:
    """Bytes of the pair representation `[N, N, c_z]` on one device (DAP splits it)."""
    c_z = config.model.embeddings_and_evoformer.pair_channel
    return shapes.num_res**2 * c_z * activation_bytes(config) / max(1, dap_size)


def estimate_peak_bytes(shapes: ModelShapes, config, chunk_size: int, kernels: str = "xla", dap_size: int = 1) -> int:
    """Estimated peak device memory of one prediction pass, in bytes (see the module doc for the model).

    chunk_size: rows in flight per chunked op (0 = unchunked). kernels: resolved "xla" or "pallas".
    dap_size: devices that split the trunk (DAP): the split tensors and rows divide by it.
    """
    m = config.model
    emb = m.embeddings_and_evoformer
    act = activation_bytes(config)
    f32 = 4
    n, s, e = shapes.num_res, shapes.num_msa, shapes.num_extra_msa
    d = max(1, dap_size)
    c_m, c_e, c_z = emb.msa_channel, emb.extra_msa_channel, emb.pair_channel
    evo = emb.evoformer
    h_row = evo.msa_row_attention_with_pair_bias.num_head
    h_col = evo.msa_column_attention.num_head
    h_tri = evo.triangle_attention_starting_node.num_head
    c_tri = evo.triangle_multiplication_outgoing.num_intermediate_channel
    c_o = evo.outer_product_mean.num_outer_channel
    pallas = kernels == "pallas"

    pair = pair_bytes(shapes, config, dap_size)
    msa = s * n * c_m * act / d
    extra = e * n * c_e * act / d
    features = (s * n * 49 + e * n * 3 + n * 60) * f32 + shapes.num_templates * n * (37 * 4 + 1) * f32
    params = 100e6 * f32  # model_1_ptm has 93M parameters

    # With a chunk size the updates are written in place (`jaxfold.model.inplace`) and the recycled pair's
    # buffer becomes the new pair; unchunked, every update is a second full-size array next to its input
    # and a LayerNorm-ed copy, and the recycled pair lives beside the new one.
    def in_place_over(size: int) -> bool:
        # `add_in_place` updates slices in place only when the chunk is shorter than the axis it slices; a
        # chunk as long as the axis computes the whole update at once, out of place.
        return 0 < chunk_size < size and d == 1

    def copies(size: int) -> int:
        return 0 if in_place_over(size) else 2  # out of place: the update and the normalised input

    in_place = in_place_over(n)
    base = params + features + (1 if in_place else 2) * pair  # the MSA is embedded after the extra-MSA stack

    def rows_in_flight(rows: int) -> int:
        rows = max(1, math.ceil(rows / d))
        return rows if chunk_size <= 0 else min(rows, chunk_size)

    def attention(rows: int, keys: int, heads: int, channels: int) -> float:
        if pallas:
            return rows_in_flight(rows) * keys * channels * act * 5
        return rows_in_flight(rows) * heads * keys * keys * f32 * 2 + rows_in_flight(rows) * keys * channels * act * 4

    bias = h_row * n * n * act
    opm_rows = outer_product_rows(rows_in_flight(n), n, c_o, 0) or rows_in_flight(n)
    operand = n * n * c_tri * act / d  # a triangle product's whole operand
    pair_ops = [
        h_tri * n * n * act + attention(n, n, h_tri, c_z) + copies(n) * pair,  # triangle attention
        (1 if in_place else 2) * operand + rows_in_flight(n) * n * c_tri * 3 * f32 + copies(n) * pair,  # triangle mult.
        rows_in_flight(n) * n * 4 * c_z * act + copies(n) * pair,  # pair transition
    ]

    def outer_product(rows: int) -> float:
        # The whole right projection [N, c_o, rows] every slice of pair rows needs (an H100 run of fp32
        # N=1,200 peaked 1.6 GiB above a model that did not count it, when it was also laid out a second time
        # for the contraction and made from a whole LayerNorm-ed MSA; now it is built in the contraction's
        # layout a chunk of sequences at a time: `outer_product_mean.right_projection`); then two slices of
        # float32 outer products.
        return rows * n * c_o * act / d + opm_rows * n * (2 * c_o * c_o + c_z) * f32 + copies(n) * pair

    # Each stage: what lives through it beside `base`, plus its largest op.
    stages = [
        extra + max(pair_ops + [outer_product(e), bias + attention(e, n, h_row, c_e) + copies(e) * extra]),
        msa
        + max(
            pair_ops
            + [
                outer_product(s),
                bias + attention(s, n, h_row, c_m) + copies(s) * msa,  # Evoformer stack
                attention(n, s, h_col, c_m) + (copies(n) + 1) * msa,
                rows_in_flight(s) * n * 4 * c_m * act + copies(s) * msa,
            ]
        ),
        # Structure module: IPA's pair bias, logits and point distances per head [H, N, N(, P)] in float32
        # and the pair it reads in float32 (normalised); with a chunk size one slice of query rows of it.
        rows_in_flight(n) * n * (2 * c_z + 96) * f32,
    ]
    if shapes.num_templates:
        # In place: one template's pair [N, N, c_t] and its stack's operand, the logits over all templates
        # [T, N, N, H] (activation dtype) and their float32 log-normaliser [N, N, H]; unchunked: every
        # template's pair at once, and the 88-channel features.
        ending = emb.template.template_pair_stack.triangle_attention_ending_node
        c_t = emb.template.get("num_channels") or ending.get("value_dim") or c_z // 2  # multimer: num_channels
        template_pair = n * n * c_t * act / d
        h_templ = emb.template.attention.num_head
        stages.append(
            2 * template_pair + (shapes.num_templates * act + f32) * n * n * h_templ / d
            if in_place
            else (shapes.num_templates + 3) * template_pair + n * n * 88 * act
        )
    return int(base + max(stages))


def claim_device_memory(environ, leave_room_for_openmm: bool = False) -> None:
    """Let JAX take DEVICE_MEMORY_FRACTION of the GPU: set XLA_PYTHON_CLIENT_MEM_FRACTION in `environ` (before
    JAX's backend starts) unless it is set already. A prediction is its process's only GPU user, and long
    chains need more than JAX's default 75% (`chunk_size="auto"` plans against the allocator's limit).
    leave_room_for_openmm: a relaxation on the GPU needs memory outside JAX's pool: JAX's default stays."""
    if not leave_room_for_openmm:
        environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", DEVICE_MEMORY_FRACTION)


# XLA's GPU autotuner times candidate kernels of an instruction on fresh buffers as large as its operands and
# outputs, plus a reference output to check them against. An instruction that reads or writes the whole pair
# (a fusion that slices it or updates it in place) then needs about three pair-sized buffers while compiling:
# 75 GiB at N = 10,240 in bf16, which ran an H100 and an H200 (75 GiB each for JAX) out of memory before the
# program existed. One more pair of slack covers the redzones and the allocator.
AUTOTUNER_PAIR_COPIES = 4


def autotuner_fits(shapes: ModelShapes, config, budget_bytes: int, dap_size: int = 1) -> bool:
    """Whether XLA's GPU autotuner can time kernels on pair-sized buffers within `budget_bytes`. When it
    cannot, the prediction compiles with autotuning off (XLA's default kernel choices; slower kernels, but
    the chain runs)."""
    return AUTOTUNER_PAIR_COPIES * pair_bytes(shapes, config, dap_size) <= budget_bytes


def device_memory_budget(device=None) -> int:
    """Bytes this process may still allocate on `device` (default: the first local device).

    GPUs report `bytes_limit - bytes_in_use`; a CPU backend has no such stats, so host RAM stands in.
    `JAXFOLD_MEMORY_BUDGET_GIB` overrides both (tests fake a small device with it).
    """
    override = os.environ.get("JAXFOLD_MEMORY_BUDGET_GIB")
    if override:
        return int(float(override) * GIB)
    device = device or jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 16 * GIB


def choose_chunk_size(
    shapes: ModelShapes,
    config,
    kernels: str,
    budget_bytes: int,
    dap_size: int = 1,
    headroom: float = DEFAULT_HEADROOM,
    unchunked_fraction: float = UNCHUNKED_FRACTION,
) -> int:
    """The `chunk_size="auto"` rule: 0 (no chunking) when the unchunked pass needs at most
    `unchunked_fraction` of the free memory (short chains: nothing to gain), or when it fits in `headroom *
    budget_bytes` and chunking would save less than `MIN_CHUNK_SAVING` of it, judged at a chunk as long as
    the chain (which slices only the MSA rows' ops, the cheapest saving); else the largest candidate chunk
    whose estimate fits in `headroom * budget_bytes`. So fp32 N=1,024 with a deep MSA runs in slices of
    1,024 (the 5,120 extra rows' temporaries are most of its unchunked peak: ~12 -> ~6 GiB), while bf16
    N=2,048, where chunking the rows saves nothing, runs unchunked (~14 GiB of 75). When no chunk fits
    the headroom, the largest whose estimate fits the whole budget (the compiled pass is checked after).

    Raises ChainTooLongError, naming what would help, when not even one row at a time fits.
    """
    allowed = headroom * budget_bytes
    unchunked = estimate_peak_bytes(shapes, config, 0, kernels, dap_size)
    if unchunked <= min(allowed, unchunked_fraction * budget_bytes):
        return 0
    rows_only = estimate_peak_bytes(shapes, config, shapes.num_res, kernels, dap_size)
    if unchunked <= allowed and rows_only > (1.0 - MIN_CHUNK_SAVING) * unchunked:
        return 0
    # First within the headroom. When nothing fits there, the estimate alone does not refuse a chain that it
    # says fits the whole free memory: `predict` compiles it and checks XLA's account of the pass (one
    # contiguous block of temporaries: 58.2 GiB compiled, 58.3 GiB measured for bf16 N=10,240) before it runs.
    for bound in (allowed, budget_bytes):
        for chunk in CHUNK_CANDIDATES:
            if estimate_peak_bytes(shapes, config, chunk, kernels, dap_size) <= bound:
                return chunk
    need = estimate_peak_bytes(shapes, config, 1, kernels, dap_size)
    gc = config.model.global_config
    raise ChainTooLongError(
        f"{_describe(shapes, gc.dtype)} need about {need / GIB:.1f} GiB even one row at a time, but "
        f"{budget_bytes / GIB:.1f} GiB of device memory is free. What would fit: "
        + "; ".join(_what_would_fit(shapes, config, kernels, dap_size))
        + "."
    )


def format_bytes(n: float) -> str:
    """`12.3 GiB`, or MiB below a GiB."""
    return f"{n / GIB:.1f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"


def _describe(shapes: ModelShapes, dtype: str) -> str:
    return (
        f"{shapes.num_res} residues ({shapes.num_msa} MSA rows, {shapes.num_extra_msa} extra rows, "
        f"{shapes.num_templates} templates, {dtype})"
    )


def _what_would_fit(shapes: ModelShapes, config, kernels: str, dap_size: int) -> list[str]:
    gc = config.model.global_config
    hints = []
    if gc.dtype != "bfloat16":
        hints.append("--precision bf16 (halves the pair representation)")
    if kernels != "pallas":
        hints.append("--kernels pallas on a GPU (fused attention: no N^2 logits)")
    hints.append(f"more GPUs with --mesh {2 * max(1, dap_size)}x1 (DAP splits the pair)")
    if shapes.num_extra_msa > 1024:
        hints.append("fewer extra MSA rows (--set data.common.max_extra_msa=1024)")
    fraction = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if jax.default_backend() == "gpu" and (fraction is None or float(fraction) < 0.9):
        hints.append(
            f"a larger share of the GPU for JAX (XLA_PYTHON_CLIENT_MEM_FRACTION={fraction or '0.75, the default'} "
            f"now; infer.py uses {DEVICE_MEMORY_FRACTION})"
        )
    return hints


def compiled_program_bytes(analyses, resident_bytes: int = 0) -> int | None:
    """Device bytes the largest of these compiled programs needs to run (`predict.compiled_bytes` of each):
    its arguments, temporaries and the outputs not written over donated arguments, less `resident_bytes` of
    arguments already on the device (counted in its used memory). None when the backend gives no analysis."""
    if any(a is None for a in analyses):
        return None
    return max(a["argument"] + a["temp"] + a["output"] - a["alias"] for a in analyses) - int(resident_bytes)


def smaller_chunk_saving(
    shapes: ModelShapes, config, kernels: str, dap_size: int, chunk_size: int, excess_bytes: int
) -> int | None:
    """The largest candidate chunk below `chunk_size` (0 = unchunked) that the estimate says saves at least
    `excess_bytes` against it: what a compiled pass `excess_bytes` too large is compiled again with. None
    when even one row at a time would not save that much (recompiling cannot help), so the prediction stops
    after one compile instead of walking down every candidate (minutes each for long chains)."""
    effective = shapes.num_res if chunk_size <= 0 else min(chunk_size, shapes.num_res)
    current = estimate_peak_bytes(shapes, config, chunk_size, kernels, dap_size)
    for chunk in (c for c in CHUNK_CANDIDATES if c < effective):
        if current - estimate_peak_bytes(shapes, config, chunk, kernels, dap_size) >= excess_bytes:
            return chunk
    return None


def compiled_too_large_message(
    shapes: ModelShapes, config, kernels: str, dap_size: int, need_bytes: int, budget_bytes: int, auto: bool
) -> str:
    """The error for a compiled pass larger than the free memory; `auto`: the chunk was chosen automatically
    (so a smaller one is not worth suggesting)."""
    gc = config.model.global_config
    chunk = gc.chunk_size or "none"
    return (
        f"{_describe(shapes, gc.dtype)}: the compiled prediction pass (chunk size {chunk}) needs "
        f"{format_bytes(need_bytes)} of device memory, but {format_bytes(budget_bytes)} is free. What would fit: "
        + "; ".join(
            (["--chunk-size auto (or a smaller chunk)"] if not auto and gc.chunk_size != 1 else [])
            + _what_would_fit(shapes, config, kernels, dap_size)
        )
        + "."
    )
