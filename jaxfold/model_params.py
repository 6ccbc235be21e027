"""Which parameters a prediction runs with: an official `params_model_*.npz`, a folder of them, or random.

`resolve_params` / `load_model_params` turn `--params` into a parameter tree for a preset (errors name the
file and, for a depth mismatch, the overrides that would fit); `init_random_params` draws random ones for
smoke runs (every output of such a run says so). Downloading the official archive: `jaxfold.params`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jaxfold.common.files import PathLike
from jaxfold.errors import InferenceError

# `params_model_2_ptm.npz`, `params_model_1_multimer_v3.npz`, and shrunk copies `params_model_1_ptm_shrunk.npz`.
_PARAMS_FILE_RE = re.compile(r"^params_(model_[1-5](?:_ptm|_multimer_v[1-3])?)(?:_[^.]*)?\.npz$")
MULTIMER_PRESET_RE = re.compile(r"^model_[1-5]_multimer_v[1-3]$")


def is_multimer_preset(preset: str) -> bool:
    """``model_N_multimer_vK`` presets (AlphaFold-Multimer) predict complexes; the others single chains."""
    return bool(MULTIMER_PRESET_RE.match(preset))


_STACK_SCOPES = ("/evoformer_iteration/", "/extra_msa_stack/", "/__layer_stack_no_state/")


def init_random_params(config, seed: int = 0, method: str = "fast") -> dict:
    """Random parameters for ``config`` (for smoke runs: ``--params random``).

    ``method='fast'`` (default): shapes from ``jax.eval_shape`` of the model's initialiser (no
    compilation) and values drawn in NumPy: weights ``N(0, 1/fan_in)``, LayerNorm scales near 1,
    biases and offsets small. Unlike AlphaFold's initialisers, the output layers are not zero, so
    the random model gives a spread-out (meaningless) structure and varied confidences instead of
    every atom on one point and a flat pLDDT of 50.
    ``method='init'``: :func:`jaxfold.model.init.init_params` (AlphaFold's initialisers),
    compiled; this takes many minutes for a full-size preset on a CPU.
    """
    if method == "init":
        import jax  # noqa: PLC0415

        from jaxfold.model.init import init_params  # noqa: PLC0415

        params = jax.jit(lambda rng: init_params(config, rng))(jax.random.PRNGKey(int(seed)))
        return jax.tree_util.tree_map(np.asarray, params)
    if method != "fast":
        raise ValueError(f"method must be 'fast' or 'init', got {method!r}")
    from jaxfold.weights import ROOT_SCOPE, flat_to_tree, model_param_shapes  # noqa: PLC0415

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6A78]))
    flat = {}
    for key, shape in sorted(model_param_shapes(config).items()):
        name = key.rsplit("//", 1)[-1]
        body = shape[1:] if any(scope in key for scope in _STACK_SCOPES) else shape
        if name == "scale":
            value = 1.0 + 0.05 * rng.standard_normal(shape)
        elif name in ("offset", "bias") or name.endswith("_b"):
            value = 0.02 * rng.standard_normal(shape)
        elif name == "trainable_point_weights":
            value = np.log(np.expm1(1.0)) + 0.05 * rng.standard_normal(shape)
        elif len(body) >= 2:
            fan_in = int(np.prod(body[:-1])) if name == "output_w" else int(body[0])
            value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        else:
            value = 0.02 * rng.standard_normal(shape)
        flat[key] = np.asarray(value, np.float32)
    return flat_to_tree(flat)[ROOT_SCOPE]


def preset_of_params_file(path: PathLike) -> str | None:
    """``params_model_2_ptm.npz`` -> ``'model_2_ptm'`` (also ``params_model_1_ptm_shrunk.npz``,
    ``params_model_1_multimer_v3.npz`` -> ``'model_1_multimer_v3'``)."""
    match = _PARAMS_FILE_RE.match(Path(path).name)
    return match.group(1) if match else None


def missing_params_message() -> str:
    return (
        "no model parameters given (--params, or the JAXFOLD_PARAMS environment variable).\n"
        "  Get DeepMind's official AlphaFold parameters (about 5.3 GB, CC BY 4.0) with\n"
        "      python -m jaxfold.params download DIR\n"
        "  and pass --params DIR (or set JAXFOLD_PARAMS=DIR).\n"
        "  For a demo of the pipeline without parameters, use --params random "
        "(random weights: the structure is meaningless)."
    )


def resolve_params(params: str | None, preset: str) -> Path | None:
    """The ``.npz`` file for ``preset`` (None for ``random``).

    ``params``: a ``params_model_*.npz`` file (used for the one preset it is given for), or a
    folder holding ``params_<preset>.npz``.
    """
    if params is None or params == "":
        raise InferenceError(missing_params_message())
    if params == "random":
        return None
    path = Path(params).expanduser()
    if path.is_dir():
        candidate = path / f"params_{preset}.npz"
        if not candidate.is_file():
            found = sorted(p.name for p in path.glob("params_model_*.npz"))
            raise InferenceError(
                f"no parameter file params_{preset}.npz in {path}"
                + (
                    f" (it holds {', '.join(found)})"
                    if found
                    else " (no params_model_*.npz there; get them with `python -m jaxfold.params download DIR`)"
                )
            )
        return candidate
    if not path.exists():
        raise InferenceError(f"parameter file or folder not found: {path}")
    file_preset = preset_of_params_file(path)
    if file_preset is not None and preset != "tiny":
        base = lambda p: p.replace("_ptm", "")  # noqa: E731
        if base(file_preset) != base(preset):
            raise InferenceError(
                f"parameter file {path.name} is for {file_preset}, not {preset}: "
                "pass a folder of parameter files to run several models"
            )
    return path


def default_models(params: str | None, multimer: bool = False) -> list[str]:
    """The presets run when ``--models`` is not given.

    A ``params_<preset>*.npz`` file: that preset. A folder: the ``model_N_ptm`` presets it
    has files for (else the ``model_N`` ones), as AlphaFold's ``monomer_ptm`` / ``monomer``
    model presets. ``random`` (or anything else): ``model_1_ptm``. With ``multimer`` (complexes):
    the ``model_N_multimer_v3`` presets a folder has files for, else ``model_1_multimer_v3``.
    """
    fallback = "model_1_multimer_v3" if multimer else "model_1_ptm"
    if params and params != "random":
        path = Path(params).expanduser()
        if path.is_file():
            return [preset_of_params_file(path) or fallback]
        if path.is_dir():
            for suffix in ("_multimer_v3",) if multimer else ("_ptm", ""):
                found = [
                    f"model_{i}{suffix}" for i in range(1, 6) if (path / f"params_model_{i}{suffix}.npz").is_file()
                ]
                if found:
                    return found
    return [fallback]


def _depth_hint(path: Path, config) -> str:
    """For a shape mismatch: the stacked depths the file has, as the overrides to pass."""
    try:
        with np.load(path, allow_pickle=False) as data:
            depth = {}
            for key in data.files:
                for stack, flag in (
                    ("/evoformer/evoformer_iteration/", "evoformer-num-block"),
                    ("/evoformer/extra_msa_stack/", "extra-msa-stack-num-block"),
                ):
                    if stack in key and flag not in depth:
                        depth[flag] = int(data[key].shape[0])
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    emb = config.model.embeddings_and_evoformer
    want = {"evoformer-num-block": emb.evoformer_num_block, "extra-msa-stack-num-block": emb.extra_msa_stack_num_block}
    differ = {k: v for k, v in depth.items() if want.get(k) != v}
    if not differ:
        return ""
    flags = " ".join(f"--{k} {v}" for k, v in differ.items())
    return (
        f" (the file has fewer stacked blocks than the preset: if it was shrunk in depth, "
        f"pass {flags} and --structure-module-num-layer as it was made with)"
    )


def load_model_params(params: str | None, preset: str, config, seed: int = 0) -> tuple[dict, bool, Path | None]:
    """``(parameter tree, is_random, file)`` for ``preset``; errors are :class:`InferenceError`."""
    from jaxfold.weights import ParamsError, load_alphafold_params  # noqa: PLC0415

    path = resolve_params(params, preset)
    if path is None:
        return init_random_params(config, seed), True, None
    try:
        return load_alphafold_params(path, config), False, path
    except ParamsError as e:
        lines = str(e).splitlines()
        first = lines[0].rstrip(":")
        detail = ""
        if len(lines) > 1:
            counts = [ln.strip().rstrip(":") for ln in lines[1:] if ln and not ln.startswith("  ")]
            examples = [ln.strip() for ln in lines[1:] if ln.startswith("  ") and "..." not in ln]
            detail = f" ({'; '.join(counts)}; e.g. {examples[0]})" if examples else ""
        hint = _depth_hint(path, config) if "wrong shape" in str(e) else ""
        raise InferenceError(f"--models {preset}: {first}{detail}{hint}") from None
