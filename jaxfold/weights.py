"""DeepMind's official AlphaFold parameter files (`params_model_*.npz`) <-> jaxfold's Flax parameter tree.

The official files are flat: `alphafold/alphafold_iteration/evoformer/evoformer_iteration/
triangle_multiplication_outgoing/left_projection//weights`, i.e. a Haiku module path, `//`, and the
parameter name. jaxfold's modules carry the same names and nesting, so the mapping is structural:
split the path at `/` (the `//` separator becomes one more level) and drop the leading `alphafold`, the
scope of jaxfold's top-level module. Stacked blocks keep their leading layer axis on both sides.

The same holds for the AlphaFold-Multimer files (`params_model_N_multimer_v3.npz`) with a multimer config
(`global_config.multimer_mode`): their modules carry the official multimer names (e.g.
`evoformer/~_relative_encoding/position_activations`, `.../triangle_multiplication_outgoing/projection`,
`structure_module/fold_iteration/quat_rigid/rigid`).

Validation compares the file with the shapes the model expects for the given config (computed with
`jax.eval_shape`, no memory spent): a missing, unexpected or mis-shaped key is an error naming the key.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

ROOT_SCOPE = "alphafold"


class ParamsError(ValueError):
    """A parameter file that does not fit the model: names the offending keys."""


def split_key(key: str) -> tuple[str, ...]:
    """`'a/b//weights'` -> `('a', 'b', 'weights')`."""
    if "//" not in key:
        raise ParamsError(f"parameter key {key!r} lacks the '//' that separates module path and name")
    scope, name = key.split("//", 1)
    return tuple(scope.split("/")) + (name,)


def join_key(path: tuple[str, ...]) -> str:
    """`('a', 'b', 'weights')` -> `'a/b//weights'`."""
    return "/".join(path[:-1]) + "//" + path[-1]


def flat_to_tree(flat: Mapping[str, np.ndarray]) -> dict:
    """Flat official-style mapping -> nested dict."""
    tree: dict = {}
    for key, value in flat.items():
        *scopes, name = split_key(key)
        node = tree
        for scope in scopes:
            node = node.setdefault(scope, {})
            if not isinstance(node, dict):
                raise ParamsError(f"parameter key {key!r} nests under an array")
        node[name] = value
    return tree


def tree_to_flat(tree: Mapping) -> dict[str, np.ndarray]:
    """Nested dict -> flat official-style mapping (inverse of `flat_to_tree`)."""
    flat: dict[str, np.ndarray] = {}

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + (key,))
            else:
                flat[join_key(path + (key,))] = value

    walk(tree, ())
    return flat


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an `.npz`; a missing or corrupt file is a `ParamsError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ParamsError(f"parameter file {str(path)!r} is not a readable .npz archive: {err}") from err


def check_against(
    flat: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple],
    source: str,
    covered: Callable[[str], bool] = lambda key: True,
) -> None:
    """Raise `ParamsError` unless `flat` has exactly the `expected` keys and shapes.

    Keys for which `covered(key)` is False are not checked for being unexpected (modules the model does
    not build under this config are simply ignored only if the caller says so).
    """
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(k for k in set(flat) - set(expected) if covered(k))
    misshaped = sorted(
        f"{k}: file {tuple(flat[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(flat)
        if tuple(flat[k].shape) != tuple(expected[k])
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if items:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"{len(items)} {title} key(s):\n  {shown}")
    if problems:
        raise ParamsError(f"{source} does not match the model:\n" + "\n".join(problems))


def expected_shapes(init_fn: Callable[[], Mapping]) -> dict[str, tuple]:
    """Flat key -> shape of the parameters `init_fn()` would create, without allocating them."""
    import jax  # noqa: PLC0415  (keeps this module importable for pure file conversion)

    shapes = jax.eval_shape(init_fn)
    return {k: tuple(v.shape) for k, v in tree_to_flat(shapes).items()}


@functools.lru_cache(maxsize=16)
def model_param_shapes(config) -> dict[str, tuple]:
    """Shapes of the official-format parameters (`alphafold/...` keys) the model builds for `config`."""
    from jaxfold.model.init import init_params  # noqa: PLC0415

    shapes = expected_shapes(lambda: init_params(config))
    return {f"{ROOT_SCOPE}/{k}": v for k, v in shapes.items()}


PAE_HEAD = f"{ROOT_SCOPE}/alphafold_iteration/predicted_aligned_error_head/"


def check_ptm_agreement(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple], path) -> None:
    """`_ptm` files carry a predicted-aligned-error head and the other presets do not: say so plainly."""
    file_has = any(k.startswith(PAE_HEAD) for k in flat)
    model_has = any(k.startswith(PAE_HEAD) for k in expected)
    if file_has and not model_has:
        raise ParamsError(
            f"parameter file {str(path)!r} is a pTM model (it has a predicted_aligned_error "
            "head) but the config has none: use the matching `model_N_ptm` preset"
        )
    if model_has and not file_has:
        raise ParamsError(
            f"parameter file {str(path)!r} has no predicted_aligned_error head but the config is "
            "a pTM preset: use the matching `model_N` preset (without `_ptm`)"
        )


def load_alphafold_params(path: str | os.PathLike, config) -> dict:
    """Read an official AlphaFold `.npz` into jaxfold's Flax parameter tree for `config`.

    Returns the nested tree rooted below `alphafold/` (pass it as `{'params': tree}` to `apply`).
    Raises `ParamsError` naming every missing, unexpected or mis-shaped key.
    """
    flat = read_npz(path)
    expected = model_param_shapes(config)
    check_ptm_agreement(flat, expected, path)
    check_against(flat, expected, f"parameter file {str(path)!r}")
    tree = flat_to_tree({k: v.astype(np.float32, copy=False) for k, v in flat.items()})
    return tree[ROOT_SCOPE]


def save_alphafold_params(params: Mapping, path: str | os.PathLike) -> None:
    """Write a jaxfold parameter tree in the official flat `.npz` layout (atomically: temp file + rename)."""
    flat = {f"{ROOT_SCOPE}/{k}": np.asarray(v) for k, v in tree_to_flat(params).items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, path)
