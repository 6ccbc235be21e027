"""`embedders.pair_embedding` / `msa_embedding` / `extra_msa_embedding`: the initial pair, MSA and extra MSA
built in row chunks straight into the activation dtype equal the whole-array embedders (bit for bit
unchunked) and DeepMind's captured trunk inputs (shared/reference/outputs.npz, final recycling pass), and
the pair's compiled temporaries really shrink."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_utils import ATOL_FULL_ACTIVATIONS, assert_close_on

from jaxfold.common import all_atom
from jaxfold.config import model_config
from jaxfold.model import embedders
from jaxfold.model.distogram import dgram_from_positions
from jaxfold.weights import flat_to_tree, read_npz

CONFIG = model_config("model_1_ptm")
C = CONFIG.model.embeddings_and_evoformer
PAIR_KEYS = ("target_feat", "residue_index", "aatype", "prev_pos", "prev_pair")


class WholeArrayEmbedding(nn.Module):
    """Today's trunk code: the whole-array embedders, then the cast to the activation dtype."""

    c: object
    dtype: str

    @nn.compact
    def __call__(self, batch):
        msa, pair = embedders.input_embedding(batch, self.c)
        msa, pair = embedders.recycling_embedding(batch, self.c, msa, pair)
        pair = pair + embedders.relative_position_encoding(batch["residue_index"], self.c)
        return msa, pair.astype(self.dtype)


class ChunkedEmbedding(nn.Module):
    c: object
    dtype: str
    chunk_size: int

    @nn.compact
    def __call__(self, batch):
        msa = embedders.msa_embedding(batch, self.c, "xla", jnp.float32, self.chunk_size)
        return msa, embedders.pair_embedding(batch, self.c, "xla", jnp.dtype(self.dtype), self.chunk_size)


@pytest.fixture(scope="module")
def reference(shared_dir):
    ref = shared_dir / "reference"
    params = flat_to_tree(read_npz(ref / "params" / "params_model_1_ptm_shrunk.npz"))
    params = params["alphafold"]["alphafold_iteration"]["evoformer"]
    with np.load(ref / "features.npz") as f:
        keys = ("target_feat", "msa_feat", "residue_index", "aatype")
        batch = {k: f[k][1] for k in keys + ("extra_msa", "extra_has_deletion", "extra_deletion_value")}
    with np.load(ref / "outputs.npz") as o:
        outputs = {k: o[k] for k in o.files if k.startswith("captured/")}
    for key in ("prev_pos", "prev_msa_first_row", "prev_pair"):
        batch[key] = outputs[f"captured/recycling_inputs/{key}"]
    return {"params": params}, batch, outputs


def embed(module, params, batch):
    return jax.device_get(jax.jit(module.apply)(params, batch))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unchunked_pair_embedding_is_bit_identical_to_whole_array_embedders(reference, dtype):
    params, batch, _ = reference
    msa_ref, pair_ref = embed(WholeArrayEmbedding(C, dtype), params, batch)
    msa, pair = embed(ChunkedEmbedding(C, dtype, 0), params, batch)
    assert pair.dtype == jnp.dtype(dtype) and pair.shape == (37, 37, C.pair_channel)
    np.testing.assert_array_equal(np.asarray(pair, np.float32), np.asarray(pair_ref, np.float32))
    np.testing.assert_array_equal(msa, msa_ref)


@pytest.mark.parametrize(
    "dtype,prev_pair_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")]
)
def test_chunked_pair_embedding_matches_unchunked(reference, dtype, prev_pair_dtype):
    """chunk 5 of 37 rows (7 loop blocks + a tail of 2); a bfloat16 prev_pair is read from the result buffer
    itself, a float32 one from its own array."""
    params, batch, _ = reference
    batch = dict(batch, prev_pair=batch["prev_pair"].astype(prev_pair_dtype))
    _, whole = embed(ChunkedEmbedding(C, dtype, 0), params, batch)
    _, chunked = embed(ChunkedEmbedding(C, dtype, 5), params, batch)
    assert chunked.dtype == jnp.dtype(dtype)
    whole, chunked = np.asarray(whole, np.float32), np.asarray(chunked, np.float32)
    if dtype == "float32":
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    else:  # the same float32 sums rounded to bfloat16: at most one bfloat16 step apart
        np.testing.assert_allclose(chunked, whole, rtol=2.0**-7, atol=1e-6)


def test_chunked_embeddings_match_deepmind_trunk_inputs(reference):
    """The initial pair plus DeepMind's template embedding equals its extra-MSA stack input pair; the
    initial MSA its Evoformer input MSA rows (before the template rows)."""
    params, batch, outputs = reference
    msa, pair = embed(ChunkedEmbedding(C, "float32", 5), params, batch)
    expected_pair = outputs["captured/extra_msa_stack/input/pair"]
    pair = pair + outputs["captured/template_embedding_output"]
    assert_close_on(pair, expected_pair, None, ATOL_FULL_ACTIVATIONS, what="initial pair")
    expected_msa = outputs["captured/evoformer_stack/input/msa"][: msa.shape[0]]
    assert_close_on(msa, expected_msa, None, ATOL_FULL_ACTIVATIONS, what="initial msa")


class MSAEmbeddings(nn.Module):
    """The MSA (rows 0-7, 5 at a time) and extra MSA (16 rows, 5 at a time) embeddings in `dtype`."""

    c: object
    dtype: str
    chunk_size: int

    @nn.compact
    def __call__(self, batch):
        dtype = jnp.dtype(self.dtype)
        msa = embedders.msa_embedding(batch, self.c, "xla", dtype, self.chunk_size)
        return msa, embedders.extra_msa_embedding(batch, self.c, dtype, self.chunk_size)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_msa_embeddings_equal_whole_ones_and_deepmind(reference, dtype):
    """Row-chunked MSA and extra-MSA embeddings (a recycled first row that only row 0 receives, a tail
    slice) equal the whole-array ones bit for bit (the same float32 sums, then one cast), and DeepMind's
    captured stack inputs."""
    params, batch, outputs = reference
    whole_msa, whole_extra = embed(MSAEmbeddings(C, dtype, 0), params, batch)
    msa, extra = embed(MSAEmbeddings(C, dtype, 5), params, batch)
    assert msa.dtype == extra.dtype == jnp.dtype(dtype)
    assert msa.shape == (8, 37, C.msa_channel) and extra.shape == (16, 37, C.extra_msa_channel)
    np.testing.assert_array_equal(np.asarray(msa, np.float32), np.asarray(whole_msa, np.float32))
    np.testing.assert_array_equal(np.asarray(extra, np.float32), np.asarray(whole_extra, np.float32))
    if dtype == "float32":
        expected_msa = outputs["captured/evoformer_stack/input/msa"][: msa.shape[0]]
        assert_close_on(msa, expected_msa, None, ATOL_FULL_ACTIVATIONS, what="initial msa")
        expected_extra = outputs["captured/extra_msa_stack/input/msa"]
        assert_close_on(extra, expected_extra, None, ATOL_FULL_ACTIVATIONS, what="extra msa embedding")


def test_dgram_rows_equals_dgram_from_positions(reference):
    _, batch, _ = reference
    positions = all_atom.pseudo_beta_fn(jnp.asarray(batch["aatype"]), jnp.asarray(batch["prev_pos"]), None)
    whole = dgram_from_positions(positions, **C.prev_pos)
    rows = embedders.dgram_rows(positions[4:9], positions, **C.prev_pos)
    assert whole.sum() > 0
    np.testing.assert_array_equal(rows, whole[4:9])


def test_pair_embedding_rejects_a_mismatched_prev_pair(reference):
    params, batch, _ = reference
    batch = dict(batch, prev_pair=batch["prev_pair"][:, :30])
    with pytest.raises(ValueError, match="prev_pair of shape"):
        ChunkedEmbedding(C, "float32", 5).apply(params, batch)


def compiled_memory(module, num_res: int, donate: bool = False):
    """XLA's memory analysis of the embeddings at `num_res` residues, float32 (shapes only, nothing runs;
    the CPU backend upcasts bfloat16 arrays, which would blur the comparison). `donate`: prev_pair donated."""
    batch = {
        "target_feat": jax.ShapeDtypeStruct((num_res, 22), jnp.float32),
        "msa_feat": jax.ShapeDtypeStruct((1, num_res, 49), jnp.float32),
        "residue_index": jax.ShapeDtypeStruct((num_res,), jnp.int32),
        "aatype": jax.ShapeDtypeStruct((num_res,), jnp.int32),
        "prev_pos": jax.ShapeDtypeStruct((num_res, 37, 3), jnp.float32),
        "prev_msa_first_row": jax.ShapeDtypeStruct((num_res, C.msa_channel), jnp.float32),
        "prev_pair": jax.ShapeDtypeStruct((num_res, num_res, C.pair_channel), jnp.float32),
    }
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), batch)

    def apply(params, prev_pair, batch):
        return module.apply(params, dict(batch, prev_pair=prev_pair))

    prev_pair = batch.pop("prev_pair")
    compiled = jax.jit(apply, donate_argnums=(1,) if donate else ()).lower(params, prev_pair, batch).compile()
    return compiled.memory_analysis()


def test_chunked_pair_embedding_temporaries_shrink():
    """At N=192 (real widths) chunked embedding (16 rows) needs fewer temporaries than whole-array embedding
    and less than half of one pair; with prev_pair donated the result is written into its buffer."""
    num_res = 192
    pair_bytes = num_res * num_res * C.pair_channel * 4
    whole = compiled_memory(WholeArrayEmbedding(C, "float32"), num_res).temp_size_in_bytes
    chunked = compiled_memory(ChunkedEmbedding(C, "float32", 16), num_res).temp_size_in_bytes
    donated = compiled_memory(ChunkedEmbedding(C, "float32", 16), num_res, donate=True)
    print(
        f"N={num_res}: temp bytes whole-array {whole}, chunked {chunked}, chunked with prev_pair donated "
        f"{donated.temp_size_in_bytes} (output aliased {donated.alias_size_in_bytes}); one pair {pair_bytes}"
    )
    assert chunked < whole
    assert chunked < 0.5 * pair_bytes
    assert donated.alias_size_in_bytes >= pair_bytes
    assert donated.temp_size_in_bytes < 0.5 * pair_bytes
