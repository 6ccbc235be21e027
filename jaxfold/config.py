"""Model/data configuration for jaxfold.

Presets live as TOML files (``configs/<preset>.toml`` at the repository root,
or ``jaxfold/_configs`` when installed as a wheel).  A preset may start with
``inherits = "<parent>"`` and then only lists the keys it changes; chains are
resolved by deep merging.  ``base.toml`` mirrors AlphaFold v2.3.2's ``CONFIG``
with AlphaFold's exact key names, plus a few jaxfold-only global switches
(``model.global_config.dtype``, ``.kernels`` and ``.chunk_size``).

Typical use::

    cfg = model_config("model_1_ptm", num_recycle=1, dtype="bfloat16")
    cfg.model.embeddings_and_evoformer.msa_channel        # 256
    cfg["model.heads.distogram.weight"]                    # 0.3
    cfg2 = cfg.replace(**{"model.heads.distogram.weight": 0.5})

:class:`Config` is immutable, hashable and compared by value, so it can be a
Flax module attribute or a static argument of :func:`jax.jit`.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ALPHAFOLD_KEYS_NOT_USED",
    "Config",
    "SHORT_OVERRIDES",
    "available_presets",
    "config_dir",
    "model_config",
    "parse_overrides",
    "preset_is_ptm",
]

_INHERITS = "inherits"
_MISSING = object()

# Short override names accepted by `model_config`, and the dotted path(s) each
# one sets.  Any full dotted path is accepted as well.
SHORT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "evoformer_num_block": ("model.embeddings_and_evoformer.evoformer_num_block",),
    "extra_msa_stack_num_block": ("model.embeddings_and_evoformer.extra_msa_stack_num_block",),
    "structure_module_num_layer": ("model.heads.structure_module.num_layer",),
    "template_pair_stack_num_block": ("model.embeddings_and_evoformer.template.template_pair_stack.num_block",),
    "num_recycle": ("model.num_recycle", "data.common.num_recycle"),
    "resample_msa_in_recycling": (
        "model.resample_msa_in_recycling",
        "data.common.resample_msa_in_recycling",
    ),
    "max_extra_msa": ("data.common.max_extra_msa",),
    "max_msa_clusters": ("data.eval.max_msa_clusters",),
    "max_templates": (
        "data.eval.max_templates",
        "model.embeddings_and_evoformer.template.max_templates",
    ),
    "dtype": ("model.global_config.dtype",),
    "kernels": ("model.global_config.kernels",),
    "chunk_size": ("model.global_config.chunk_size",),
    "use_remat": ("model.global_config.use_remat",),
    "remat_policy": ("model.global_config.remat_policy",),
    "deterministic": ("model.global_config.deterministic",),
    "zero_init": ("model.global_config.zero_init",),
}


# AlphaFold config keys that jaxfold expresses through one of its own keys: override path -> (jaxfold path,
# value converter).  AlphaFold's `global_config.bfloat16` is jaxfold's `global_config.dtype`, so DeepMind's
# dotted overrides (e.g. the multimer reference manifest's `model.global_config.bfloat16=false`) apply as is.
def _bfloat16_to_dtype(value: Any) -> str:
    if not isinstance(value, bool):
        raise TypeError(f"model.global_config.bfloat16 must be a bool; got {value!r}")
    return "bfloat16" if value else "float32"


ALIASES: dict[str, tuple[str, Any]] = {
    "model.global_config.bfloat16": ("model.global_config.dtype", _bfloat16_to_dtype),
}

# AlphaFold's own chunking keys, left out on purpose: jaxfold has one switch, `model.global_config.chunk_size`
# (0, N or "auto", resolved by the prediction runner), used by every chunked op.
ALPHAFOLD_KEYS_NOT_USED: tuple[str, ...] = (
    "model.global_config.subbatch_size",
    "model.embeddings_and_evoformer.template.subbatch_size",
    "model.embeddings_and_evoformer.evoformer.outer_product_mean.chunk_size",
)

# Allowed values of jaxfold's string-valued switches.
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.global_config.dtype": ("float32", "bfloat16"),
    "model.global_config.kernels": ("auto", "xla", "pallas"),
    "model.global_config.remat_policy": ("nothing", "dots", "dots_no_batch", "offload_dots"),
}

# Settings that take a non-negative integer or the string "auto" (resolved by the prediction runner,
# `jaxfold.model.predict`, from the shapes and the device's memory; modules used directly read "auto" as 0).
_INT_OR_AUTO: tuple[str, ...] = ("model.global_config.chunk_size",)

# Integer settings that must be >= 0.
_NON_NEGATIVE: tuple[str, ...] = (
    "model.num_recycle",
    "data.common.num_recycle",
    "model.embeddings_and_evoformer.evoformer_num_block",
    "model.embeddings_and_evoformer.extra_msa_stack_num_block",
    "model.embeddings_and_evoformer.template.template_pair_stack.num_block",
    "model.heads.structure_module.num_layer",
    "data.common.max_extra_msa",
    "data.eval.max_msa_clusters",
    "data.eval.max_templates",
)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _suggest(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Close matches for `name`: by full string, then by last path component."""
    out = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    leaf = name.rsplit(".", 1)[-1]
    by_leaf: dict[str, list[str]] = {}
    for c in candidates:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], []).append(c)
    for close_leaf in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.75):
        for c in by_leaf[close_leaf]:
            if c not in out:
                out.append(c)
    return out[:n]


def _did_you_mean(matches: list[str]) -> str:
    if not matches:
        return ""
    return " Did you mean: " + ", ".join(repr(m) for m in matches) + "?"


def _freeze(value: Any, where: str) -> Any:
    """Convert a value to its immutable Config representation."""
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, where) for v in value)
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"Config value at {where!r} has unhashable type {type(value).__name__}") from None
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """Hashable, type-strict, key-order-insensitive form of a value."""
    if isinstance(value, Config):
        return value._key()
    if isinstance(value, tuple):
        return ("tuple", tuple(_canonical(v) for v in value))
    # Tag leaves with their type: Config(a=1) != Config(a=1.0) != Config(a=True),
    # so e.g. jit caches never confuse an int setting with a float one.
    return (type(value).__name__, value)


def _coerce(path: str, old: Any, new: Any) -> Any:
    """Type-check `new` against the existing value `old` at `path`."""

    def fail() -> TypeError:
        return TypeError(
            f"Config value at {path!r} must be of type {type(old).__name__} "
            f"(current value {old!r}); got {new!r} of type {type(new).__name__}"
        )

    if path in _INT_OR_AUTO:
        if new != "auto" and (isinstance(new, bool) or not isinstance(new, int)):
            raise TypeError(f"Config value at {path!r} must be a non-negative int or 'auto'; got {new!r}")
        return new
    if isinstance(old, Config):
        if not isinstance(new, Mapping):
            raise fail()
        return Config(new)
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise fail()
        return new
    if isinstance(old, int):
        if isinstance(new, bool) or not isinstance(new, int):
            raise fail()
        return int(new)
    if isinstance(old, float):
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            raise fail()
        return float(new)
    if isinstance(old, str):
        if not isinstance(new, str):
            raise fail()
        return new
    if isinstance(old, tuple):
        if not isinstance(new, (list, tuple)):
            raise fail()
        return _freeze(new, path)
    if old is None:
        return _freeze(new, path)
    if not isinstance(new, type(old)):
        raise fail()
    return new


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
class Config(Mapping):
    """Immutable nested mapping with attribute access.

    * ``cfg.model.msa_channel`` / ``cfg["model"]`` / ``cfg["model.msa_channel"]``
    * hashable and compared by value (type-strict on leaves, key order ignored)
    * nested mappings become ``Config``; lists become tuples
    * ``replace(**{"a.b.c": v})`` returns a modified copy
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None, /, **kwargs: Any):
        items: dict[str, Any] = {}
        for source in (data or {}, kwargs):
            for k, v in source.items():
                if not isinstance(k, str):
                    raise TypeError(f"Config keys must be str, got {k!r}")
                items[k] = _freeze(v, k)
        object.__setattr__(self, "_data", items)
        object.__setattr__(self, "_hash", None)

    # -- immutability ------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is immutable: cannot set {name!r}; use .replace(...) instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Config is immutable: cannot delete {name!r}")

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(f"Config is immutable: cannot set {key!r}; use .replace(...) instead")

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"Config is immutable: cannot delete {key!r}")

    def __copy__(self) -> Config:
        return self

    def __deepcopy__(self, memo: dict) -> Config:
        return self

    def __reduce__(self):
        return (Config, (self.to_dict(),))

    # -- mapping protocol ------------------------------------------------------
    def _lookup(self, key: Any) -> Any:
        """Value at `key` (a key or a dotted path), or `_MISSING`."""
        data = self._data
        if key in data:
            return data[key]
        if not isinstance(key, str) or "." not in key:
            return _MISSING
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, Config) or part not in node._data:
                return _MISSING
            node = node._data[part]
        return node

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is _MISSING:
            raise KeyError(self._unknown_message(key))
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        try:
            return self._lookup(key) is not _MISSING
        except TypeError:  # unhashable key
            return False

    def get(self, key: str, default: Any = None) -> Any:
        value = self._lookup(key)
        return default if value is _MISSING else value

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails.
        if name.startswith("__") or name in Config.__slots__:
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(self._unknown_message(name)) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._data))

    # -- value semantics -------------------------------------------------------
    def _key(self) -> tuple:
        return tuple(sorted((k, _canonical(v)) for k, v in self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self is other or (hash(self) == hash(other) and self._key() == other._key())
        if isinstance(other, Mapping):
            try:
                return self._key() == Config(other)._key()
            except TypeError:
                return False
        return NotImplemented

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(("jaxfold.Config", self._key()))
            object.__setattr__(self, "_hash", h)
        return h

    # -- conversion / display ----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict`` (tuples become lists), e.g. for JSON/TOML."""
        return {k: _thaw(v) for k, v in self._data.items()}

    def flatten(self) -> dict[str, Any]:
        """``{"dotted.path": leaf_value}`` for every leaf."""
        out: dict[str, Any] = {}

        def walk(node: Config, prefix: str) -> None:
            for k, v in node._data.items():
                path = f"{prefix}{k}"
                if isinstance(v, Config) and len(v):
                    walk(v, path + ".")
                else:
                    out[path] = v

        walk(self, "")
        return out

    def _all_paths(self) -> list[str]:
        paths: list[str] = []

        def walk(node: Config, prefix: str) -> None:
            for k, v in node._data.items():
                paths.append(prefix + k)
                if isinstance(v, Config):
                    walk(v, prefix + k + ".")

        walk(self, "")
        return paths

    def _unknown_message(self, key: Any) -> str:
        matches = _suggest(str(key), self._all_paths()) if isinstance(key, str) else []
        return f"unknown config key {key!r}.{_did_you_mean(matches)}"

    def __repr__(self) -> str:
        return "Config(" + _render(self, 0, width=88) + ")"

    __str__ = __repr__

    # -- functional update -----------------------------------------------------
    def replace(self, **updates: Any) -> Config:
        """Return a copy with ``{dotted_path: value}`` updates applied.

        Paths must already exist; values are type-checked against the current
        value (an int is accepted for a float; a mapping replaces a sub-table).
        Unknown paths raise ``KeyError`` naming the path and close matches.
        """
        if not updates:
            return self
        tree = self.to_dict()
        for path, value in updates.items():
            parts = path.split(".")
            node: Any = tree
            for depth, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(f"unknown config path {path!r}." + _did_you_mean(_suggest(path, self._all_paths())))
                if depth < len(parts) - 1:
                    node = node[part]
            old = self[path]
            node[parts[-1]] = _thaw(_coerce(path, old, value))
        return Config(tree)


def _render(value: Any, indent: int, width: int, used: int = 0) -> str:
    """Pretty, eval-able rendering: sub-tables on one line when they fit.

    `indent` is the current indentation; `used` the characters already on the
    line before the value (its key).
    """
    flat = repr(_thaw(value))
    if not isinstance(value, Config) or not value or indent + used + len(flat) < width:
        return flat
    pad = " " * (indent + 4)
    lines = ["{"]
    for k, v in value.items():
        prefix = f"{k!r}: "
        lines.append(f"{pad}{prefix}{_render(v, indent + 4, width, len(prefix))},")
    lines.append(" " * indent + "}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Preset files
# ---------------------------------------------------------------------------
def _candidate_dirs() -> tuple[Path, ...]:
    here = Path(__file__).resolve().parent
    return (here.parent / "configs", here / "_configs")


def config_dir() -> Path:
    """Directory holding the preset ``*.toml`` files."""
    for d in _candidate_dirs():
        if (d / "base.toml").is_file():
            return d
    raise FileNotFoundError(
        "jaxfold preset directory not found; looked in " + ", ".join(str(d) for d in _candidate_dirs())
    )


def available_presets() -> list[str]:
    """Names of the presets accepted by :func:`model_config`."""
    return sorted(p.stem for p in config_dir().glob("*.toml"))


def _merge_child(parent: dict, child: dict, prefix: str, child_name: str) -> dict:
    """Deep-merge `child` into a copy of `parent`; child may only set known keys."""
    out = dict(parent)
    for k, v in child.items():
        path = prefix + k
        if k not in parent:
            hint = _did_you_mean(_suggest(k, list(parent)))
            raise ValueError(
                f"preset {child_name!r} sets {path!r}, which its parent does "
                f"not define (presets may only change existing keys).{hint}"
            )
        old = parent[k]
        if isinstance(old, dict):
            if not isinstance(v, dict):
                raise TypeError(f"preset {child_name!r}: {path!r} must be a table")
            out[k] = _merge_child(old, v, path + ".", child_name)
        else:
            out[k] = _thaw(_coerce(path, _freeze(old, path), v))
    return out


def _resolve_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    if path in chain:
        names = " -> ".join(p.stem for p in (*chain, path))
        raise ValueError(f"cyclic preset inheritance: {names}")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    parent_name = raw.pop(_INHERITS, None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise TypeError(f"{path}: 'inherits' must be a preset name (string)")
    parent_path = _preset_path(parent_name, relative_to=path.parent)
    parent = _resolve_file(parent_path, (*chain, path))
    return _merge_child(parent, raw, "", path.stem)


def _preset_path(name: str, relative_to: Path | None = None) -> Path:
    """Path of preset `name` (a preset name or a path to a .toml file)."""
    if name.endswith(".toml") or "/" in name or "\\" in name:
        p = Path(name)
        if not p.is_absolute() and relative_to is not None:
            if (relative_to / p).is_file():
                p = relative_to / p
        if p.is_file():
            return p.resolve()
        raise ValueError(f"preset file {name!r} not found")
    if relative_to is not None and (relative_to / f"{name}.toml").is_file():
        return (relative_to / f"{name}.toml").resolve()
    p = config_dir() / f"{name}.toml"
    if p.is_file():
        return p.resolve()
    presets = available_presets()
    raise ValueError(
        f"unknown preset {name!r}. Available presets: {', '.join(presets)}."
        + _did_you_mean(difflib.get_close_matches(name, presets, n=3))
    )


@functools.lru_cache(maxsize=64)
def _load_preset(path: Path) -> Config:
    cfg = Config(_resolve_file(path))
    _validate(cfg, source=path.stem)
    return cfg


def _validate(cfg: Config, source: str) -> None:
    for path, choices in _CHOICES.items():
        if path in cfg and cfg[path] not in choices:
            raise ValueError(
                f"{source}: {path.rsplit('.', 1)[-1]} ({path}) must be one of "
                f"{', '.join(map(repr, choices))}; got {cfg[path]!r}"
            )
    for path in _NON_NEGATIVE:
        if path in cfg and cfg[path] < 0:
            raise ValueError(f"{source}: {path} must be >= 0; got {cfg[path]!r}")
    for path in _INT_OR_AUTO:
        if (
            path in cfg
            and cfg[path] != "auto"
            and (isinstance(cfg[path], bool) or not isinstance(cfg[path], int) or cfg[path] < 0)
        ):
            raise ValueError(f"{source}: {path} must be a non-negative int or 'auto'; got {cfg[path]!r}")


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------
def parse_overrides(items) -> dict[str, Any]:
    """Command-line ``PATH=VALUE`` overrides (``--set``) -> ``{PATH: value}`` for :func:`model_config`.

    VALUE is read as a TOML value (``4``, ``1e-3``, ``false``, ``"bfloat16"``); anything that is not
    valid TOML is kept as a plain string. Raises ValueError for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expects PATH=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def model_config(preset: str = "model_1_ptm", **overrides: Any) -> Config:
    """Load a preset and apply overrides.

    Args:
      preset: a name from :func:`available_presets` (e.g. ``"model_1_ptm"``,
        ``"tiny"``) or a path to a ``.toml`` file (which may ``inherits`` a
        preset).
      **overrides: short names from :data:`SHORT_OVERRIDES` (e.g.
        ``num_recycle=1``, ``dtype="bfloat16"``) and/or full dotted paths,
        passed as ``**{"model.heads.distogram.weight": 0.5}``.  Values are
        type-checked against the preset's value (int accepted for float).

    Raises:
      ValueError: unknown preset or override name, or an invalid value.
      TypeError: an override of the wrong type.
    """
    cfg = _load_preset(_preset_path(preset))
    if not overrides:
        return cfg
    updates: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in SHORT_OVERRIDES:
            for path in SHORT_OVERRIDES[name]:
                updates[path] = value
        elif name in ALIASES and name not in cfg:
            path, convert = ALIASES[name]
            updates[path] = convert(value)
        elif name in cfg:
            updates[name] = value
        else:
            matches = _suggest(name, list(SHORT_OVERRIDES) + cfg._all_paths())
            raise ValueError(
                f"unknown override {name!r} for preset {preset!r}. Pass one of "
                f"the short names ({', '.join(SHORT_OVERRIDES)}) or a full "
                f"dotted path such as 'model.heads.distogram.weight'." + _did_you_mean(matches)
            )
    cfg = cfg.replace(**updates)
    _validate(cfg, source=f"model_config({preset!r})")
    return cfg


def preset_is_ptm(cfg: Mapping[str, Any]) -> bool:
    """Whether the config has the predicted-aligned-error (pTM) head enabled."""
    heads = cfg["model"]["heads"]
    pae = heads.get("predicted_aligned_error") if isinstance(heads, Mapping) else None
    return bool(pae) and float(pae.get("weight", 0.0)) > 0.0
