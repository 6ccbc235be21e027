"""Tests for jaxfold.config: presets, overrides and the Config type."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from jaxfold.config import (
    ALPHAFOLD_KEYS_NOT_USED,
    SHORT_OVERRIDES,
    Config,
    available_presets,
    model_config,
    preset_is_ptm,
)

OFFICIAL = [f"model_{i}{s}" for s in ("", "_ptm") for i in range(1, 6)]
EVO = "model.embeddings_and_evoformer"
TEMPLATE = f"{EVO}.template"


@pytest.fixture(scope="module")
def manifest(shared_dir) -> dict:
    with open(shared_dir / "reference" / "manifest.json") as f:
        return json.load(f)


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------
def test_available_presets():
    presets = available_presets()
    for name in ["base", "tiny", *OFFICIAL]:
        assert name in presets


@pytest.mark.parametrize("preset", ["base", "tiny", *OFFICIAL])
def test_every_preset_loads(preset):
    cfg = model_config(preset)
    assert isinstance(cfg, Config)
    assert "inherits" not in cfg
    assert cfg.model.global_config.dtype in ("float32", "bfloat16")
    assert cfg.model.global_config.kernels in ("auto", "xla", "pallas")
    assert cfg.model.num_recycle == cfg.data.common.num_recycle
    assert cfg.data.eval.max_templates == cfg[f"{TEMPLATE}.max_templates"]


def _compare(ours: dict, ref: dict, path: str = "") -> tuple[list[str], list[str]]:
    """Recursive value+type comparison on shared keys; also lists ref-only keys."""
    diffs, missing = [], []
    for key, ref_value in ref.items():
        p = f"{path}{key}"
        if key not in ours:
            missing.append(p)
            continue
        value = ours[key]
        if isinstance(ref_value, dict):
            assert isinstance(value, dict), p
            d, m = _compare(value, ref_value, p + ".")
            diffs += d
            missing += m
        elif value != ref_value or type(value) is not type(ref_value):
            diffs.append(f"{p}: ours={value!r} reference={ref_value!r}")
    return diffs, missing


def test_matches_deepmind_reference_config(manifest):
    """The config DeepMind's code ran for the reference data (model_1_ptm,
    shrunk) equals ours with the same shrink overrides, key for key, type for
    type (int vs float)."""
    ref = copy.deepcopy(manifest["config"])
    ref["data"]["eval"].pop("feat", None)  # AlphaFold's TF shape placeholders
    for path in ALPHAFOLD_KEYS_NOT_USED:  # AlphaFold's chunk sizes: jaxfold has the one global chunk_size
        *parents, leaf = path.split(".")
        node = ref
        for part in parents:
            node = node[part]
        assert leaf in node, path
        del node[leaf]
    cfg = model_config("model_1_ptm", **manifest["shrink_overrides"])
    diffs, missing = _compare(cfg.to_dict(), ref)
    assert not diffs, "\n".join(diffs)
    assert not missing, f"keys in DeepMind's config missing here: {missing}"


def test_full_size_values():
    cfg = model_config("model_1_ptm")
    evo = cfg.model.embeddings_and_evoformer
    assert (evo.msa_channel, evo.pair_channel, evo.seq_channel) == (256, 128, 384)
    assert evo.extra_msa_channel == 64
    assert evo.evoformer_num_block == 48
    assert evo.extra_msa_stack_num_block == 4
    assert evo.template.template_pair_stack.num_block == 2
    assert cfg.model.heads.structure_module.num_layer == 8
    assert cfg.model.num_recycle == 3 and cfg.data.common.num_recycle == 3
    assert cfg.model.resample_msa_in_recycling is True
    assert cfg.data.eval.max_msa_clusters == 512
    gc = cfg.model.global_config
    assert gc.to_dict() == {
        "deterministic": False,
        "eval_dropout": False,
        "multimer_mode": False,
        "use_remat": False,
        "zero_init": True,
        "dtype": "float32",
        "kernels": "auto",
        "chunk_size": "auto",
        "remat_policy": "nothing",
    }


def test_base_matches_alphafold_CONFIG():
    base = model_config("base")
    assert base[f"{TEMPLATE}.enabled"] is False
    assert base[f"{TEMPLATE}.embed_torsion_angles"] is False
    assert base.data.common.use_templates is False
    assert base.data.common.reduce_msa_clusters_by_max_templates is False
    assert base.data.common.max_extra_msa == 1024
    assert base.model.heads.predicted_aligned_error.weight == 0.0


@pytest.mark.parametrize(
    "preset, templates, max_extra_msa",
    [
        ("model_1", True, 5120),
        ("model_2", True, 1024),
        ("model_3", False, 5120),
        ("model_4", False, 5120),
        ("model_5", False, 1024),
    ],
)
@pytest.mark.parametrize("ptm", [False, True])
def test_config_diffs(preset, templates, max_extra_msa, ptm):
    name = preset + ("_ptm" if ptm else "")
    cfg = model_config(name)
    assert cfg[f"{TEMPLATE}.enabled"] is templates
    assert cfg[f"{TEMPLATE}.embed_torsion_angles"] is templates
    assert cfg.data.common.use_templates is templates
    assert cfg.data.common.reduce_msa_clusters_by_max_templates is templates
    assert cfg.data.common.max_extra_msa == max_extra_msa
    assert cfg.model.heads.predicted_aligned_error.weight == (0.1 if ptm else 0.0)
    assert preset_is_ptm(cfg) is ptm
    # Everything else is the base config.
    base = model_config("base").flatten()
    changed = {k for k, v in cfg.flatten().items() if base[k] != v}
    assert changed <= {
        f"{TEMPLATE}.enabled",
        f"{TEMPLATE}.embed_torsion_angles",
        "data.common.use_templates",
        "data.common.reduce_msa_clusters_by_max_templates",
        "data.common.max_extra_msa",
        "model.heads.predicted_aligned_error.weight",
    }


def test_tiny_is_consistent():
    cfg = model_config("tiny")
    evo = cfg.model.embeddings_and_evoformer
    e = evo.evoformer
    assert preset_is_ptm(cfg) and evo.template.enabled
    assert evo.evoformer_num_block == 2 and evo.extra_msa_stack_num_block == 1
    assert evo.template.template_pair_stack.num_block == 1
    assert cfg.model.heads.structure_module.num_layer == 2
    assert cfg.model.num_recycle == 1 == cfg.data.common.num_recycle
    for ch in (evo.msa_channel, evo.extra_msa_channel):
        assert ch % e.msa_row_attention_with_pair_bias.num_head == 0
        assert ch % e.msa_column_attention.num_head == 0
    assert evo.pair_channel % e.triangle_attention_starting_node.num_head == 0
    assert evo.pair_channel % e.triangle_attention_ending_node.num_head == 0
    att = evo.template.attention
    assert att.key_dim % att.num_head == 0 and att.value_dim % att.num_head == 0
    tps = evo.template.template_pair_stack
    width = tps.triangle_attention_ending_node.value_dim  # template pair width
    for node in ("triangle_attention_starting_node", "triangle_attention_ending_node"):
        a = tps[node]
        assert a.key_dim % a.num_head == 0 and a.value_dim % a.num_head == 0
        assert a.key_dim == a.value_dim == width
    assert cfg.data.eval.max_templates == evo.template.max_templates == 2
    assert cfg.data.common.max_extra_msa == 16
    assert cfg.data.eval.max_msa_clusters == 8
    # Widths really are narrow.
    assert (evo.msa_channel, evo.pair_channel, evo.seq_channel) == (32, 16, 32)
    sm = cfg.model.heads.structure_module
    assert sm.num_channel == 32 and sm.sidechain.num_channel == 16
    assert cfg.model.heads.predicted_lddt.num_channels == 16
    assert cfg.model.heads.predicted_aligned_error.num_channels == 16


def test_unknown_preset():
    with pytest.raises(ValueError, match="model_1_ptm") as info:
        model_config("model_6_ptm")
    assert "Available presets" in str(info.value)


def test_preset_file_path(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('inherits = "tiny"\n[model.heads.distogram]\nweight = 1\n')
    cfg = model_config(str(f))
    assert cfg.model.heads.distogram.weight == 1.0
    assert type(cfg.model.heads.distogram.weight) is float
    bad = tmp_path / "bad.toml"
    bad.write_text('inherits = "tiny"\n[model.heads.distogram]\nwieght = 1.0\n')
    with pytest.raises(ValueError, match="weight"):
        model_config(str(bad))


# ---------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------
def test_short_overrides():
    cfg = model_config(
        "model_1_ptm",
        evoformer_num_block=3,
        extra_msa_stack_num_block=2,
        structure_module_num_layer=4,
        template_pair_stack_num_block=1,
        num_recycle=0,
        max_extra_msa=32,
        max_msa_clusters=16,
        dtype="bfloat16",
        kernels="pallas",
        chunk_size=64,
        use_remat=True,
        deterministic=True,
        zero_init=False,
    )
    evo = cfg.model.embeddings_and_evoformer
    assert evo.evoformer_num_block == 3
    assert evo.extra_msa_stack_num_block == 2
    assert cfg.model.heads.structure_module.num_layer == 4
    assert evo.template.template_pair_stack.num_block == 1
    assert cfg.model.num_recycle == 0 and cfg.data.common.num_recycle == 0
    assert cfg.data.common.max_extra_msa == 32
    assert cfg.data.eval.max_msa_clusters == 16
    gc = cfg.model.global_config
    assert (gc.dtype, gc.kernels, gc.chunk_size) == ("bfloat16", "pallas", 64)
    assert gc.use_remat and gc.deterministic and not gc.zero_init
    # The preset itself is untouched.
    assert model_config("model_1_ptm").model.num_recycle == 3


def test_every_short_override_targets_existing_paths():
    cfg = model_config("base")
    for paths in SHORT_OVERRIDES.values():
        for p in paths:
            assert p in cfg, p


def test_dotted_overrides():
    cfg = model_config("tiny", **{"model.heads.distogram.weight": 1})
    assert cfg.model.heads.distogram.weight == 1.0
    assert type(cfg.model.heads.distogram.weight) is float  # int ok for float
    cfg = model_config("tiny", **{f"{EVO}.msa_channel": 64})
    assert cfg.model.embeddings_and_evoformer.msa_channel == 64


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"evoformer_num_blocks": 1}, "evoformer_num_block"),
        ({"model.heads.distogram.wieght": 1.0}, "model.heads.distogram.weight"),
        ({"msa_channel": 8}, f"{EVO}.msa_channel"),
    ],
)
def test_unknown_override_suggests(overrides, expected):
    with pytest.raises(ValueError) as info:
        model_config("tiny", **overrides)
    msg = str(info.value)
    assert repr(next(iter(overrides))) in msg
    assert expected in msg


@pytest.mark.parametrize(
    "overrides, exc",
    [
        ({"num_recycle": 1.5}, TypeError),
        ({"num_recycle": True}, TypeError),
        ({"use_remat": 1}, TypeError),
        ({"dtype": 32}, TypeError),
        ({"dtype": "float16"}, ValueError),
        ({"kernels": "triton"}, ValueError),
        ({"chunk_size": -1}, ValueError),
        ({"chunk_size": "big"}, TypeError),
        ({"chunk_size": 2.0}, TypeError),
        ({"model.heads.distogram.weight": "0.5"}, TypeError),
    ],
)
def test_bad_override_values(overrides, exc):
    with pytest.raises(exc):
        model_config("tiny", **overrides)


# ---------------------------------------------------------------------------
# Config type
# ---------------------------------------------------------------------------
def test_config_access():
    cfg = model_config("tiny")
    assert cfg.model.heads is cfg["model"]["heads"]
    assert cfg["model.heads.distogram.num_bins"] == 64
    assert "model.heads.distogram" in cfg and "model" in cfg
    assert "nope" not in cfg and "model.nope" not in cfg
    assert cfg.get("model.nope", 7) == 7
    assert cfg.model.get("num_recycle") == 1
    assert isinstance(cfg.data.common.template_features, tuple)
    assert isinstance(cfg.to_dict()["data"]["common"]["template_features"], list)
    with pytest.raises(AttributeError, match="msa_channel"):
        cfg.model.embeddings_and_evoformer.msa_chanel
    with pytest.raises(KeyError):
        cfg["model.nope"]
    assert "msa_channel" in repr(cfg) and repr(cfg).startswith("Config(")
    assert eval(repr(cfg), {"Config": Config}) == cfg


def test_config_value_semantics():
    a, b = model_config("tiny"), model_config("tiny", num_recycle=1)
    assert a == b and hash(a) == hash(b)
    assert a != model_config("tiny", num_recycle=2)
    assert a != model_config("model_1_ptm")
    assert len({a, b, model_config("base")}) == 2
    # Key order does not matter; leaf types do.
    assert Config({"x": 1, "y": {"z": 2}}) == Config(y={"z": 2}, x=1)
    assert hash(Config(x=1, y=2)) == hash(Config(y=2, x=1))
    assert Config(x=1) != Config(x=1.0) and Config(x=1) != Config(x=True)
    assert Config(x=1, y={"z": [1, 2]}) == {"x": 1, "y": {"z": [1, 2]}}
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a and copy.copy(a) == a


def test_config_is_immutable():
    cfg = model_config("tiny")
    with pytest.raises(AttributeError):
        cfg.model = None
    with pytest.raises(AttributeError):
        cfg.model.num_recycle = 5
    with pytest.raises(TypeError):
        cfg["model"] = None
    with pytest.raises(AttributeError):
        del cfg.model
    with pytest.raises(TypeError):
        Config(x=[{1, 2}])  # unhashable leaf
    assert cfg.model.num_recycle == 1


def test_replace():
    cfg = model_config("tiny")
    new = cfg.replace(**{"model.num_recycle": 2, "model.heads.distogram.weight": 1})
    assert new.model.num_recycle == 2 and new.model.heads.distogram.weight == 1.0
    assert cfg.model.num_recycle == 1  # original untouched
    assert new != cfg
    assert new.model.heads.masked_msa is not None
    assert new.replace(**{"model.num_recycle": 1, "model.heads.distogram.weight": 0.3}) == cfg
    assert Config(a=1).replace(a=2) == Config(a=2)
    sub = cfg.replace(**{"model.heads.masked_msa": {"num_output": 23, "weight": 0.0}})
    assert sub.model.heads.masked_msa.weight == 0.0
    with pytest.raises(KeyError) as info:
        cfg.replace(**{f"{EVO}.msa_chanel": 3})
    msg = str(info.value)
    assert f"{EVO}.msa_chanel" in msg and f"{EVO}.msa_channel" in msg
    with pytest.raises(KeyError):
        cfg.replace(**{"model.num_recycle.x": 3})
    with pytest.raises(TypeError):
        cfg.replace(**{"model.num_recycle": "3"})


def test_config_as_jit_static_argument():
    jax = pytest.importorskip("jax")
    calls = []

    def f(x, cfg):
        calls.append(1)
        return x * cfg.model.num_recycle

    g = jax.jit(f, static_argnums=1)
    assert float(g(2.0, model_config("tiny"))) == 2.0
    assert float(g(2.0, model_config("tiny"))) == 2.0  # equal config: cached
    assert len(calls) == 1
    assert float(g(2.0, model_config("tiny", num_recycle=3))) == 6.0
    assert len(calls) == 2
