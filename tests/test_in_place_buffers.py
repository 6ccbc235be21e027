"""In-place updates really are in place: XLA compiles an in-place Evoformer block (chunked inference) without
copying the pair inside its slice loops.

`add_in_place` writes each slice's update into the pair with `dynamic_update_slice`; XLA reuses the carried
buffer only when nothing else reads the old pair after the write. Had a slice loop kept the old pair alive
(e.g. an update closing over the whole pair), every iteration would copy `[N, N, c_z]` (a second pair in memory
and N/chunk full copies per update). On the CPU backend this holds in float32; in bfloat16 the CPU compiler
computes the residual add in float32 (it has no bf16 arithmetic) and then copies, which GPUs (native bf16 adds)
are not expected to do: `bench/kernels.py` is where the GPU program is inspected (an H200 compiled the bf16
block with none, 2026-12-07).

Besides the pair, a block needs the whole operand of each triangle multiplication while it runs: one at a time,
in the channel-major layout the product reads (`test_chained_in_place_blocks_hold_one_whole_operand`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxfold.config import model_config
from jaxfold.model.evoformer import EvoformerIteration
from jaxfold.model.inplace import copies_in_compiled

N_RES, N_SEQ, CHUNK = 48, 16, 16


def compiled_blocks(chunk_size: int, n_res: int = N_RES, n_seq: int = N_SEQ, num_blocks: int = 1):
    """`num_blocks` chained Evoformer blocks (XLA kernels, fp32, random inputs) compiled with the MSA and pair
    donated, as a prediction pass runs them; returns (compiled program, pair)."""
    cfg = model_config("model_1_ptm", kernels="xla", zero_init=False)
    cfg = cfg.replace(**{"model.global_config.chunk_size": chunk_size})
    block = EvoformerIteration(cfg.model.embeddings_and_evoformer.evoformer, cfg.model.global_config)
    key = jax.random.PRNGKey(0)
    msa = jax.random.normal(key, (n_seq, n_res, 256))
    pair = jax.random.normal(key, (n_res, n_res, 128))
    msa_mask, pair_mask = jnp.ones((n_seq, n_res)), jnp.ones((n_res, n_res))
    params = block.init(key, (msa, pair), msa_mask, pair_mask)

    def blocks(p, m, z):
        for _ in range(num_blocks):
            (m, z), _ = block.apply(p, (m, z), msa_mask, pair_mask)
        return m, z

    return jax.jit(blocks, donate_argnums=(1, 2)).lower(params, msa, pair).compile(), pair


def compiled_block_text(chunk_size: int) -> str:
    return compiled_blocks(chunk_size)[0].as_text()


def copies_of_the_pair(text: str) -> list[str]:
    return copies_in_compiled(text, f"f32[{N_RES},{N_RES},128]")


def test_in_place_block_never_copies_the_pair():
    text = compiled_block_text(CHUNK)
    assert text.count(" while(") >= 5  # the block really ran slice loops (one per pair and MSA update at least)
    assert copies_of_the_pair(text) == []


def test_the_copy_check_sees_a_pair_kept_alive():
    """A slice loop whose update reads the original pair (closed over) instead of the carried one: XLA must
    keep both, and the check above sees the copy."""

    def keeps_old(pair):
        def one(i, carried):
            old = lax.dynamic_slice_in_dim(pair, i * CHUNK, CHUNK, 0)
            new = lax.dynamic_slice_in_dim(carried, i * CHUNK, CHUNK, 0) + 2.0 * old
            return lax.dynamic_update_slice_in_dim(carried, new, i * CHUNK, 0)

        return lax.fori_loop(0, N_RES // CHUNK, one, pair)

    text = jax.jit(keeps_old).lower(jnp.ones((N_RES, N_RES, 128))).compile().as_text()
    assert len(copies_of_the_pair(text)) == 1


@pytest.mark.parametrize("n_res", [160, 168])
def test_chained_in_place_blocks_hold_one_whole_operand(n_res):
    """Two in-place Evoformer blocks in one program: XLA's temporaries stay near 2 pairs (one whole triangle
    operand `[c, N, N]`, as large as the pair here, plus slices and the MSA). Before every slice loop's output
    buffer was made from its own input (`chunking.output_buffer`) and the operand was built channel-major, the
    CPU compiler shared one zero array copied into each buffer and transposed each operand (6.2 pairs at this
    size), and the GPU compiler made the four operands' buffers at once (100 GiB at N = 10,240 in bf16).
    168 residues end in a part slice (10 x 16 + 8): with the remainder as a step after the loop this was 2.35
    pairs on the CPU (and on a GPU a copy and two transposes of the pair); as an overlapping last slice in
    the loop (`chunking.over_slices`) 1.94."""
    compiled, pair = compiled_blocks(CHUNK, n_res=n_res, n_seq=8, num_blocks=2)
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 2.2 * pair.nbytes, f"temporaries {temp / pair.nbytes:.2f} pairs"
