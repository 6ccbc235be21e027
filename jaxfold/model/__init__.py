"""AlphaFold2 in Flax. Public API:

- `run_alphafold(config, params, features, rng=None) -> dict[str, np.ndarray]`: the whole model with
  recycling on DeepMind's processed features (monomer: leading recycling axis; multimer, when
  `global_config.multimer_mode`: the multimer batch and the apply key `rng`), returning outputs under the key
  names of DeepMind's results (`structure_module/final_atom_positions`, `confidence/plddt`, ...).
- `AlphaFold`: the Flax module underneath (`AlphaFold(config.model).apply({'params': params}, batch)`).
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common.geometry import Rigid, Vec3
from jaxfold.model.alphafold import AlphaFold, AlphaFoldIteration
from jaxfold.model.confidence import get_confidence_metrics
from jaxfold.parallel.mesh import dap_for_mesh
from jax.sharding import PartitionSpec as P

__all__ = ["AlphaFold", "AlphaFoldIteration", "run_alphafold", "flatten_outputs", "flat_outputs_with_confidence",
           "compiled_model", "compiled_multimer_model"]


@functools.lru_cache(maxsize=8)
def compiled_model(config, mesh=None):
    """`jit(AlphaFold(config.model).apply)`, compiled once per config (and per input shape).

    With a `mesh` that has a `dap` axis of size > 1 the model runs inside `jax.shard_map`: parameters and
    features replicated, the trunk's stacks split over `dap` (dynamic axial parallelism), everything else
    replicated, outputs replicated.
    """
    dap = dap_for_mesh(mesh)
    model = AlphaFold(config.model, dap=dap)

    def apply(params, batch):
        return model.apply({"params": params}, batch)

    if dap.enabled:
        apply = jax.shard_map(apply, mesh=mesh, in_specs=(P(), P()), out_specs=P())
    return jax.jit(apply)


def flatten_outputs(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested model outputs -> flat `a/b/c` keys; Vec3 become `x/y/z`, Rot3 `xx..zz`, Rigid `rot/trans`."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Rigid):
            value = {"rot": value.rot, "trans": value.trans}
        if isinstance(value, Vec3) or type(value).__name__ == "Rot3":
            value = {f.name if hasattr(f, "name") else f: getattr(value, f.name if hasattr(f, "name") else f)
                     for f in _fields(value)}
        if isinstance(value, Mapping):
            flat.update(flatten_outputs(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def _fields(obj):
    import dataclasses  # noqa: PLC0415

    return [f.name for f in dataclasses.fields(obj)]


@functools.lru_cache(maxsize=8)
def compiled_multimer_model(config, mesh=None):
    """`jit` of `AlphaFoldMultimer(config.model).apply(params, batch, key)`; under a mesh with `dap` > 1 it
    runs inside `jax.shard_map` as the monomer model does."""
    from jaxfold.model.alphafold_multimer import AlphaFoldMultimer  # noqa: PLC0415

    dap = dap_for_mesh(mesh)
    model = AlphaFoldMultimer(config.model, dap=dap)

    def apply(params, batch, key):
        return model.apply({"params": params}, batch, key)

    if dap.enabled:
        apply = jax.shard_map(apply, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())
    return jax.jit(apply)


def run_alphafold(config, params: Mapping, features: Mapping, mesh=None,
                  rng: jax.Array | None = None) -> dict[str, np.ndarray]:
    """Predict a structure with the whole model.

    config: a `jaxfold.config.Config` (e.g. `model_config('model_1_ptm')`).
    params: the tree from `jaxfold.weights.load_alphafold_params`.
    features: DeepMind's processed features with a leading recycling axis (`features.npz` layout).
    mesh: optional `jax.sharding.Mesh` (see `jaxfold.parallel.mesh.make_mesh`); its `dap` axis splits the
      trunk over devices (dynamic axial parallelism). Results equal the unsharded run to round-off.
    Returns numpy arrays: `representations/*`, `structure_module/*`, each head's outputs, and
    `confidence/*` (`plddt`, and with the pTM head `predicted_aligned_error`,
    `max_predicted_aligned_error`, `aligned_confidence_probs`, `ptm`; plus `ranking_confidence`).

    Multimer configs (`config.model.global_config.multimer_mode`): `features` is the multimer batch as
    DeepMind's model consumes it (no recycling axis, the whole MSA; it is sampled inside the model) and `rng`
    the apply key (default `PRNGKey(0)`): the same key as `hk.transform(...).apply(params, rng, ...)` gives
    DeepMind's outputs. Adds `confidence/iptm`, the multimer `confidence/ranking_confidence` (0.8 ipTM +
    0.2 pTM) and `num_recycles` (recycling passes run; early stop on `recycle_early_stop_tolerance`).
    """
    if config.model.global_config.multimer_mode:
        from jaxfold.model.alphafold_multimer import haiku_rng_key, prepare_batch  # noqa: PLC0415

        rng = jax.random.PRNGKey(0) if rng is None else rng
        outputs = compiled_multimer_model(config, mesh)(params, prepare_batch(features), haiku_rng_key(rng))
        return flat_outputs_with_confidence(jax.tree_util.tree_map(np.asarray, outputs), multimer_mode=True)
    if rng is not None:
        raise ValueError("rng is only used by multimer models (the monomer model samples no MSA inside); "
                         "monomer features carry their sampled MSA per recycling iteration")
    batch = {k: jnp.asarray(v) for k, v in features.items() if np.asarray(v).dtype.kind in "biuf"}
    outputs = compiled_model(config, mesh)(params, batch)
    return flat_outputs_with_confidence(jax.tree_util.tree_map(np.asarray, outputs))


def flat_outputs_with_confidence(outputs: Mapping, multimer_mode: bool = False) -> dict[str, np.ndarray]:
    """Nested numpy model outputs -> flat keys plus AlphaFold's `confidence/*` metrics (computed on host);
    with `multimer_mode` also ipTM, and the ranking confidence is 0.8 ipTM + 0.2 pTM."""
    flat = flatten_outputs(outputs)
    heads = {"predicted_lddt": outputs["predicted_lddt"]}
    if "predicted_aligned_error" in outputs:
        heads["predicted_aligned_error"] = outputs["predicted_aligned_error"]
    for key, value in get_confidence_metrics(heads, multimer_mode=multimer_mode).items():
        flat[f"confidence/{key}"] = np.asarray(value)
    return flat
