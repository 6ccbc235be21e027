"""The one way to run AlphaFold for prediction: processed features in, outputs out.

`predict(config, params, features)` is used by `infer.py` (through `jaxfold.inference`), by the Python API
(`jaxfold.model.run_alphafold`) and by evaluation. It

- resolves the run-time switches once: `kernels` ("auto": Pallas on GPU, XLA elsewhere) and `chunk_size`
  ("auto": chosen before compiling from the shapes, the precision and the device's free memory, see
  `jaxfold.model.memory`; a chain that cannot fit fails here with a message saying what would);
- compiles two programs per shape and caches them: a pass of the trunk and structure module, and the
  heads of the last pass. Recycling runs pass by pass on device (the recycled pair, MSA row and atom
  positions never leave it; their buffers are donated to the next pass so it can update them in place),
  with a hook after every pass for progress bars;
- runs the same code on one device or a DAP mesh (`mesh`, see `jaxfold.parallel.mesh.make_mesh`);
- returns either every output of DeepMind's model (`outputs="full"`: representations, all head logits,
  confidences computed as DeepMind's `get_confidence_metrics`) or what the writers need (`outputs="lean"`:
  structure, pLDDT, PAE and pTM computed on device a slice of rows at a time, nothing N^2 x 64 brought
  to the host), which is what long chains can afford.

Features: DeepMind's processed monomer layout with a leading recycling axis (`features.npz`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxfold.common.geometry import Rigid, Vec3
from jaxfold.model import memory
from jaxfold.model.alphafold import AlphaFoldHeads, AlphaFoldIteration, initial_recycling_inputs, recycling_outputs
from jaxfold.model.alphafold_multimer import AlphaFoldMultimer, haiku_rng_key, prepare_batch
from jaxfold.model.confidence import get_confidence_metrics, ranking_confidence
from jaxfold.model.confidence_on_device import AlignedErrorSummary
from jaxfold.model.heads import PredictedLDDTHead
from jaxfold.model.kernels import resolve_kernels
from jaxfold.parallel.mesh import dap_for_mesh

OUTPUT_MODES = ("full", "lean")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The switches a prediction was run with, after "auto" was resolved."""

    kernels: str
    chunk_size: int
    dtype: str
    dap_size: int
    estimated_peak_bytes: int
    budget_bytes: int
    autotune: bool  # XLA's GPU autotuner on (off when it cannot fit pair-sized buffers: `memory.autotuner_fits`)

    def compiler_options(self) -> dict:
        """XLA options for compiling this prediction's programs (only GPUs have an autotuner)."""
        return {} if self.autotune or jax.default_backend() != "gpu" else {"xla_gpu_autotune_level": 0}


def _numeric(features: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in features.items() if np.asarray(v).dtype.kind in "biuf"}


def resolve_settings(
    config,
    shapes: memory.ModelShapes,
    *,
    mesh=None,
    kernels: str | None = None,
    chunk_size: int | str | None = None,
    budget_bytes: int | None = None,
):
    """`(config with concrete kernels and chunk_size, RunSettings)` for a prediction of these shapes.

    kernels / chunk_size: None keeps the config's value; "auto" is resolved here (see module doc).
    budget_bytes: free device memory (default: measured, see `memory.device_memory_budget`).
    Raises `memory.ChainTooLongError` when `chunk_size="auto"` finds no size that fits.
    """
    gc = config.model.global_config
    kernels = resolve_kernels(gc.kernels if kernels is None else kernels)
    chunk = gc.chunk_size if chunk_size is None else chunk_size
    if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0):
        raise ValueError(f"chunk_size must be 'auto' or an int >= 0, got {chunk!r}")
    dap_size = dap_for_mesh(mesh).size if mesh is not None else 1
    budget = memory.device_memory_budget() if budget_bytes is None else int(budget_bytes)
    if chunk == "auto":
        chunk = memory.choose_chunk_size(shapes, config, kernels, budget, dap_size)
    resolved = config.replace(**{"model.global_config.kernels": kernels, "model.global_config.chunk_size": chunk})
    settings = RunSettings(
        kernels=kernels,
        chunk_size=chunk,
        dtype=gc.dtype,
        dap_size=dap_size,
        estimated_peak_bytes=memory.estimate_peak_bytes(shapes, config, chunk, kernels, dap_size),
        budget_bytes=budget,
        autotune=memory.autotuner_fits(shapes, config, budget, dap_size),
    )
    return resolved, settings


class LeanHeads(nn.Module):
    """The heads the writers need, for long chains: pLDDT logits `[N, 50]`, and with the pTM head the PAE
    `[N, N]` and pTM reduced on device (`AlignedErrorSummary`). Same parameter scopes as AlphaFold's heads."""

    config: object  # cfg.model

    @nn.compact
    def __call__(self, representations: dict, batch: dict) -> dict:
        c = self.config
        gc = c.global_config
        out = {
            "predicted_lddt": PredictedLDDTHead(c.heads.predicted_lddt, gc, name="predicted_lddt_head")(representations)
        }
        if c.heads.predicted_aligned_error.weight:
            chunk = gc.chunk_size if isinstance(gc.chunk_size, int) and gc.chunk_size > 0 else 0
            asym_id = batch.get("asym_id") if gc.multimer_mode else None
            out["aligned_error_summary"] = AlignedErrorSummary(
                c.heads.predicted_aligned_error, gc, chunk_size=chunk, name="predicted_aligned_error_head"
            )(representations["pair"], batch["seq_mask"], asym_id)
        return out


@dataclasses.dataclass
class _Programs:
    """The two compiled programs of one (config, mesh, outputs, shapes) and the seconds they took."""

    iteration: Callable
    heads: Callable
    compile_seconds: float


_PROGRAMS: dict = {}
_PROGRAMS_MAX = 8


def clear_compiled() -> None:
    """Forget every compiled prediction program (benchmarks of compile counts start from nothing)."""
    _PROGRAMS.clear()
    _multimer_program.cache_clear()


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves)


def _programs(config, mesh, outputs: str, params, batch, prev, compiler_options=None) -> _Programs:
    compiler_options = dict(compiler_options or {})
    key = (
        config.model,
        mesh,
        outputs,
        tuple(sorted(compiler_options.items())),
        _signature(params),
        _signature(batch),
        _signature(prev),
    )
    if key in _PROGRAMS:
        return dataclasses.replace(_PROGRAMS[key], compile_seconds=0.0)
    dap = dap_for_mesh(mesh)
    iteration_module = AlphaFoldIteration(config.model, dap=dap, compute_heads=False)
    heads_module = AlphaFoldHeads(config.model) if outputs == "full" else LeanHeads(config.model)

    def iteration(params, batch, prev):
        ret = iteration_module.apply({"params": params}, dict(batch, **prev))
        if outputs == "lean":
            # Only the full heads read the MSA representation (masked-MSA logits): a lean pass does not write
            # it out, so its copy [N_seq, N, c_m] is never allocated beside the pass's temporaries (0.6 GiB
            # at 1,200 residues in float32, measured as part of the peak on an H100).
            representations = {k: v for k, v in ret["representations"].items() if k != "msa"}
            ret = dict(ret, representations=representations)
        return ret

    def heads(params, representations, batch):
        return heads_module.apply({"params": params}, representations, batch)

    if dap.enabled:  # both programs on the mesh (the heads replicated), so their arrays never move
        iteration = jax.shard_map(iteration, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())
        heads = jax.shard_map(heads, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())
    start = time.perf_counter()
    # The recycled inputs are donated: the next pass may write its pair into the previous pair's buffer.
    iteration_fn = jax.jit(iteration, donate_argnums=(2,)).lower(params, batch, prev).compile(compiler_options)
    representations_shape = jax.eval_shape(lambda p, b, r: iteration(p, b, r)["representations"], params, batch, prev)
    heads_fn = jax.jit(heads).lower(params, representations_shape, batch).compile(compiler_options)
    programs = _Programs(iteration_fn, heads_fn, time.perf_counter() - start)
    if len(_PROGRAMS) >= _PROGRAMS_MAX:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = programs
    return programs


def compiled_bytes(compiled) -> dict | None:
    """XLA's memory analysis of a compiled program (bytes of temporaries, arguments, outputs, and outputs
    aliased to donated arguments), or None where the backend gives none: what the program needs beside its
    inputs, known before it runs (the memory estimate's check)."""
    try:
        m = compiled.memory_analysis()
        return {
            "temp": int(m.temp_size_in_bytes),
            "argument": int(m.argument_size_in_bytes),
            "output": int(m.output_size_in_bytes),
            "alias": int(m.alias_size_in_bytes),
        }
    except Exception:  # noqa: BLE001  (backends without an analysis)
        return None


def _resident_bytes(params) -> int:
    """Bytes of the parameters already on the device: they are in its used memory and in the compiled
    programs' arguments, and are counted once."""
    return sum(x.nbytes for x in jax.tree_util.tree_leaves(params) if isinstance(x, jax.Array))


def number_of_passes(config, features: Mapping) -> int:
    """Recycling passes the model runs: `num_recycle + 1`, lowered by `num_iter_recycling` if given."""
    num_iter = int(config.model.num_recycle)
    if "num_iter_recycling" in features:
        num_iter = min(int(np.asarray(features["num_iter_recycling"]).reshape(-1)[0]), num_iter)
    return num_iter + 1


def predict(
    config,
    params: Mapping,
    features: Mapping,
    *,
    mesh=None,
    rng: jax.Array | None = None,
    kernels: str | None = None,
    chunk_size: int | str | None = None,
    outputs: str = "full",
    on_compiled: Callable[[float], None] | None = None,
    on_pass: Callable[[int, int, float], None] | None = None,
    timings: dict | None = None,
    budget_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Predict a structure from processed features.

    config: `jaxfold.config.model_config(...)`. params: the tree of `load_alphafold_params` (with or
      without the top `alphafold_iteration` level).
    features: processed monomer features, leading recycling axis (`features.npz` layout).
    mesh: optional DAP mesh; results equal the unsharded run to round-off.
    kernels: "auto" | "xla" | "pallas"; chunk_size: "auto" | int (0 = unchunked); None keeps the config's.
    outputs: "full" or "lean" (see module doc).
    rng: multimer models only: the apply key of DeepMind's model (default `PRNGKey(0)`), which samples the
      MSA inside the model; multimer features have no recycling axis (`jaxfold.model.alphafold_multimer`).
    on_compiled(seconds): called once the programs are compiled (0 s when cached).
    on_pass(index, num_passes, seconds): called after every pass (index 0 .. num_passes - 1).
    timings: optional dict receiving `compile` (0 when cached), `pass_<i>` and `predict` seconds, the
      resolved settings under `settings` (a RunSettings) and the compiled programs' memory analysis under
      `compiled_bytes` (`compiled_bytes()`; set before the programs run).
    Returns flat numpy outputs (`structure_module/final_atom_positions`, `confidence/plddt`, ...).
    """
    if outputs not in OUTPUT_MODES:
        raise ValueError(f"outputs must be one of {OUTPUT_MODES}, got {outputs!r}")
    timings = {} if timings is None else timings
    if config.model.global_config.multimer_mode:
        return _predict_multimer(
            config,
            params,
            features,
            mesh=mesh,
            rng=rng,
            kernels=kernels,
            chunk_size=chunk_size,
            timings=timings,
            budget_bytes=budget_bytes,
        )
    if rng is not None:
        raise ValueError(
            "rng is only used by multimer models (the monomer model samples no MSA inside); "
            "monomer features carry their sampled MSA per recycling iteration"
        )
    batch_all = _numeric(features)
    num_passes = number_of_passes(config, batch_all)
    batch_all.pop("num_iter_recycling", None)
    model = config.model
    num_slices, num_res = batch_all["aatype"].shape[:2]
    if model.resample_msa_in_recycling and num_slices < num_passes:
        raise ValueError(
            f"features hold {num_slices} recycling slice(s) but the config runs {num_passes} "
            "passes: process them with the same config (num_recycle)"
        )
    shapes = memory.ModelShapes.from_features(batch_all, config)
    params = params["alphafold_iteration"] if "alphafold_iteration" in params else params
    resident = _resident_bytes(params)
    auto_chunk = (config.model.global_config.chunk_size if chunk_size is None else chunk_size) == "auto"

    def pass_batch(i: int) -> dict:
        i = i if model.resample_msa_in_recycling else 0
        return {k: jnp.asarray(v[i]) for k, v in batch_all.items()}

    compile_seconds = 0.0
    while True:
        resolved, settings = resolve_settings(
            config, shapes, mesh=mesh, kernels=kernels, chunk_size=chunk_size, budget_bytes=budget_bytes
        )
        # Compiled from shapes alone, before the pass's arrays exist on the device: XLA's GPU autotuner runs
        # candidate kernels on buffers as large as their operands (a pair-sized fusion's input and output:
        # 50 GiB at N = 10,240 in bf16), and it ran an H200 with 75 GiB out of memory while the recycled pair
        # was resident.
        programs = _programs(
            resolved,
            mesh,
            outputs,
            params,
            jax.eval_shape(lambda: pass_batch(0)),
            jax.eval_shape(lambda: initial_recycling_inputs(model, num_res)),
            settings.compiler_options(),
        )
        compile_seconds += programs.compile_seconds
        # Set before the check, so that a refused prediction still reports what it would have needed.
        timings["settings"] = settings
        timings["compile"] = compile_seconds
        timings["compiled_bytes"] = {
            "iteration": compiled_bytes(programs.iteration),
            "heads": compiled_bytes(programs.heads),
        }
        # XLA knows what the compiled pass needs; the estimate that chose the chunk only approximates it. A
        # pass that cannot fit stops here, before it runs, instead of failing in XLA's allocator.
        need = memory.compiled_program_bytes(list(timings["compiled_bytes"].values()), resident_bytes=resident)
        if need is None or need <= settings.budget_bytes:
            break
        smaller = None
        if auto_chunk:
            smaller = memory.smaller_chunk_saving(
                shapes, resolved, settings.kernels, settings.dap_size, settings.chunk_size, need - settings.budget_bytes
            )
        if smaller is None:
            raise memory.ChainTooLongError(
                memory.compiled_too_large_message(
                    shapes, resolved, settings.kernels, settings.dap_size, need, settings.budget_bytes, auto_chunk
                )
            )
        warnings.warn(
            f"the compiled pass at chunk size {settings.chunk_size or 'none'} needs {memory.format_bytes(need)} "
            f"but {memory.format_bytes(settings.budget_bytes)} is free: compiling again with chunk size {smaller}",
            RuntimeWarning,
            stacklevel=2,
        )
        chunk_size = smaller
    config = resolved
    model = config.model
    prev = initial_recycling_inputs(model, num_res)
    if on_compiled is not None:
        on_compiled(compile_seconds)
    start_all = time.perf_counter()
    for i in range(num_passes):
        start = time.perf_counter()
        batch = pass_batch(i)
        ret = programs.iteration(params, batch, prev)
        prev = recycling_outputs(ret)  # the same device arrays: nothing is copied
        if i + 1 < num_passes:
            del ret  # only the recycled outputs go on: the pass's other outputs free their memory now
        jax.block_until_ready(prev)
        timings[f"pass_{i}"] = time.perf_counter() - start
        if on_pass is not None:
            on_pass(i, num_passes, timings[f"pass_{i}"])
    heads = programs.heads(params, ret["representations"], batch)
    if outputs == "lean":
        ret = {
            "structure_module": {
                k: v
                for k, v in ret["structure_module"].items()
                if k in ("final_atom_positions", "final_atom_mask", "final_atom14_positions", "final_atom14_mask")
            }
        }
    ret = jax.device_get(dict(ret, **heads))
    timings["predict"] = time.perf_counter() - start_all
    return flat_outputs(ret, multimer_mode=bool(model.global_config.multimer_mode))


@functools.lru_cache(maxsize=8)
def _multimer_program(config, mesh):
    dap = dap_for_mesh(mesh)
    model = AlphaFoldMultimer(config.model, dap=dap)

    def apply(params, batch, key):
        return model.apply({"params": params}, batch, key)

    if dap.enabled:
        apply = jax.shard_map(apply, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())
    return jax.jit(apply)


def _predict_multimer(config, params, features, *, mesh, rng, kernels, chunk_size, timings, budget_bytes):
    """AlphaFold-Multimer: one program, recycling (with its early stop on the change of the Calpha distances)
    and the in-model MSA sampling inside it, as DeepMind's key schedule needs; the same kernels, chunk and
    mesh switches as the monomer path (chunk "auto" is estimated from the sampled MSA's shapes)."""
    batch = prepare_batch(features)
    shapes = memory.ModelShapes(
        num_res=int(np.shape(batch["aatype"])[-1]),
        num_msa=int(config.model.embeddings_and_evoformer.num_msa),
        num_extra_msa=int(config.model.embeddings_and_evoformer.num_extra_msa),
        num_templates=int(np.shape(batch["template_aatype"])[0]) if "template_aatype" in batch else 0,
    )
    config, timings["settings"] = resolve_settings(
        config, shapes, mesh=mesh, kernels=kernels, chunk_size=chunk_size, budget_bytes=budget_bytes
    )
    rng = jax.random.PRNGKey(0) if rng is None else rng
    program = _multimer_program(config, mesh)
    start = time.perf_counter()
    compiled = program.lower(params, batch, haiku_rng_key(rng)).compile(timings["settings"].compiler_options())
    timings["compile"] = time.perf_counter() - start
    timings["compiled_bytes"] = {"model": compiled_bytes(compiled)}
    settings = timings["settings"]
    need = memory.compiled_program_bytes([timings["compiled_bytes"]["model"]], resident_bytes=_resident_bytes(params))
    if need is not None and need > settings.budget_bytes:  # one program: refused, not recompiled
        raise memory.ChainTooLongError(
            memory.compiled_too_large_message(
                shapes, config, settings.kernels, settings.dap_size, need, settings.budget_bytes, auto=False
            )
        )
    start = time.perf_counter()
    out = jax.device_get(compiled(params, batch, haiku_rng_key(rng)))
    timings["predict"] = time.perf_counter() - start
    return flat_outputs(out, multimer_mode=True)


def flat_outputs(outputs: Mapping, multimer_mode: bool = False) -> dict[str, np.ndarray]:
    """Nested numpy outputs -> flat keys plus AlphaFold's `confidence/*` metrics.

    Full outputs get DeepMind's `get_confidence_metrics` on the host; lean ones carry PAE/pTM from the
    device (`aligned_error_summary`) and get pLDDT and the ranking confidence here.
    """
    outputs = dict(outputs)
    summary = outputs.pop("aligned_error_summary", None)
    flat = flatten_outputs(outputs)
    heads = {"predicted_lddt": outputs["predicted_lddt"]}
    if "predicted_aligned_error" in outputs:
        heads["predicted_aligned_error"] = outputs["predicted_aligned_error"]
    metrics = get_confidence_metrics(heads, multimer_mode=multimer_mode and summary is None)
    if summary is not None:
        metrics.update({k: np.asarray(v) for k, v in summary.items()})
        metrics["ranking_confidence"] = ranking_confidence(
            metrics["plddt"], metrics.get("ptm"), metrics.get("iptm"), multimer_mode
        )
    for key, value in metrics.items():
        flat[f"confidence/{key}"] = np.asarray(value)
    return flat


def flatten_outputs(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested model outputs -> flat `a/b/c` keys; Vec3 become `x/y/z`, Rot3 `xx..zz`, Rigid `rot/trans`."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Rigid):
            value = {"rot": value.rot, "trans": value.trans}
        if isinstance(value, Vec3) or type(value).__name__ == "Rot3":
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            flat.update(flatten_outputs(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat
