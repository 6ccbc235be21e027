"""Long chains: memory and time of the pair embedding and the structure module, whole-array vs chunked.

    python -m bench.long_chain_embed_sm                 # GPU plan: N = 2048, 4096, 8192, 10240; chunk 0 vs 64
    python -m bench.long_chain_embed_sm --n 4096 --chunk 32 128
    python -m bench.long_chain_embed_sm --quick         # CPU smoke run: N = 96, chunk 0 vs 16 (seconds)

Cases (model_1_ptm widths, activations bfloat16, each in its own process with
`XLA_PYTHON_CLIENT_PREALLOCATE=false` so `peak_bytes_in_use` is that case's alone):
- `embed`: `embedders.msa_embedding` + `embedders.pair_embedding` (input embedding + recycled positions and
  pair + relative positions) from a bfloat16 `prev_pair` that is donated, as the prediction runner does.
  chunk 0 is the whole-array path (what `embeddings_and_evoformer.py` computes today).
- `sm`: `StructureModule` (8 shared-weight layers) on a bfloat16 pair `[N, N, 128]`. chunk 0 casts the pair
  to float32 and layer-norms it whole, and IPA builds `[H, N, N]` logits and `[H, N, N, P]` distances.
Each row: XLA's compiled temporaries (`memory_analysis().temp_size_in_bytes`), argument bytes, the device's
peak bytes in use (GPU only), and the median time of 3 runs after a warm-up; the ratio columns compare each
chunked row with the chunk-0 row of the same kind and N, measured in the same run.

Expected (written before measuring): at N=8192 the bf16 pair is 17.2 GB. Whole-array embedding holds f32
[N, N, 128] sums (34 GB each) and a [N, N, 65] one-hot; whole-array structure module a 34 GB f32 pair copy,
its layer norm, and 13 GB of IPA point distances: both should fail or nearly fail at 8192 on 80 GB, while
the chunked ones stay at one pair (+ the donated input for embed) + O(chunk * N) temporaries.
Writes bench/results/long-chain-embed-sm-<device>-<UTC stamp>.json with the commit and device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench._common import (
    RESULTS,
    cell,
    device_kind,
    is_oom,
    last_json_line,
    median,
    peak_bytes,
    print_header,
    record,
    run_module,
    timed,
    write_results,
)


def embed_case(num_res: int, chunk: int):
    """(jitted function, its arguments) for the embeddings at `num_res` residues."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxfold.config import model_config
    from jaxfold.model import embedders

    c = model_config("model_1_ptm").model.embeddings_and_evoformer

    class Embed(nn.Module):
        @nn.compact
        def __call__(self, batch):
            msa = embedders.msa_embedding(batch, c)
            return msa, embedders.pair_embedding(batch, c, "xla", jnp.bfloat16, chunk)

    def make_batch(n: int) -> dict:
        rng = np.random.default_rng(0)
        aatype = rng.integers(0, 20, n)
        return {
            "target_feat": jax.nn.one_hot(aatype + 1, 22),
            "msa_feat": jnp.asarray(rng.random((4, n, 49)), jnp.float32),
            "residue_index": jnp.arange(n),
            "aatype": jnp.asarray(aatype),
            "prev_pos": jnp.asarray(rng.normal(0, 30, (n, 37, 3)), jnp.float32),
            "prev_msa_first_row": jnp.asarray(rng.normal(size=(n, c.msa_channel)), jnp.float32),
        }

    batch = make_batch(num_res)
    prev_pair = jax.jit(lambda k: jax.random.normal(k, (num_res, num_res, c.pair_channel), jnp.bfloat16))
    module = Embed()
    # Parameters do not depend on N: initialise on 8 residues.
    params = module.init(
        jax.random.PRNGKey(0), dict(make_batch(8), prev_pair=jnp.zeros((8, 8, c.pair_channel), jnp.bfloat16))
    )

    def apply(params, prev_pair, batch):
        return module.apply(params, dict(batch, prev_pair=prev_pair))

    # prev_pair is donated (consumed) by every call, as in the prediction runner: make a fresh one per call.
    fn = jax.jit(apply, donate_argnums=(1,))
    return fn, lambda: (params, prev_pair(jax.random.PRNGKey(1)), batch)


def sm_case(num_res: int, chunk: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxfold.common.all_atom import make_atom14_masks
    from jaxfold.config import model_config
    from jaxfold.model.structure_module import StructureModule

    overrides = {"chunk_size": chunk} if chunk else {}
    cfg = model_config("model_1_ptm", **overrides).model
    sm = cfg.heads.structure_module
    rng = np.random.default_rng(0)
    aatype = jnp.asarray(rng.integers(0, 20, num_res))
    batch = {"seq_mask": jnp.ones(num_res), "aatype": aatype, **make_atom14_masks(aatype)}
    single = jnp.asarray(rng.normal(size=(num_res, 384)), jnp.float32)
    pair = jax.jit(lambda k: jax.random.normal(k, (num_res, num_res, 128), jnp.bfloat16))(jax.random.PRNGKey(1))
    module = StructureModule(sm, cfg.global_config)
    small_batch = {"seq_mask": jnp.ones(8), "aatype": aatype[:8], **make_atom14_masks(aatype[:8])}
    params = module.init(jax.random.PRNGKey(0), {"single": single[:8], "pair": pair[:8, :8]}, small_batch)
    fn = jax.jit(lambda p, reps, b: module.apply(p, reps, b)["final_atom_positions"])
    return fn, lambda: (params, {"single": single, "pair": pair}, batch)


def run_case(kind: str, num_res: int, chunk: int, repeats: int) -> dict:
    row = {"kind": kind, "n_res": num_res, "chunk": chunk, "device": device_kind()}
    try:
        fn, make_args = (embed_case if kind == "embed" else sm_case)(num_res, chunk)
        args = make_args()
        compiled = fn.lower(*args).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            row["temp_gib"] = mem.temp_size_in_bytes / 2**30
            row["arg_gib"] = mem.argument_size_in_bytes / 2**30
            row["out_gib"] = mem.output_size_in_bytes / 2**30
            row["alias_gib"] = mem.alias_size_in_bytes / 2**30
        # The first call is a warm-up; every call gets fresh (donated) arguments, made before the clock starts.
        _, times = timed(compiled, *args, repeats=repeats, fresh_args=make_args)
        row["time_s"] = median(times)
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001  (out of memory is a result here)
        text = f"{type(err).__name__}: {err}"
        row["status"] = "oom" if is_oom(text) else "error"
        row["error"] = text[:400]
    peak = peak_bytes()
    if peak is not None:
        row["peak_gib"] = peak / 2**30
    return row


def spawn(kind: str, num_res: int, chunk: int, args) -> dict:
    try:
        proc = run_module(
            "long_chain_embed_sm",
            ["--one", kind, "--n", str(num_res), "--chunk", str(chunk), "--repeats", str(args.repeats)],
            timeout=args.timeout,
            env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        )
    except subprocess.TimeoutExpired:
        return {"kind": kind, "n_res": num_res, "chunk": chunk, "status": "timeout"}
    row = last_json_line(proc.stdout)
    if row is not None:
        return row
    return {"kind": kind, "n_res": num_res, "chunk": chunk, "status": "crashed", "error": proc.stderr[-600:]}


def print_table(rows, device: str) -> None:
    print_header(
        f"Pair embedding and structure module on {device} (model_1_ptm widths, bf16 pair)",
        f"{'kind':<6}{'N':>7}{'chunk':>7}{'status':>8}{'temp GiB':>10}{'args GiB':>10}{'peak GiB':>10}"
        f"{'time s':>9}{'temp x':>8}{'peak x':>8}{'time x':>8}",
    )
    base = {(r["kind"], r["n_res"]): r for r in rows if r["chunk"] == 0}

    def f(r, key):
        return cell(r.get(key), ".3f")

    def ratio(r, key):
        b = base.get((r["kind"], r["n_res"]), {})
        ok = isinstance(r.get(key), (int, float)) and isinstance(b.get(key), (int, float)) and b[key] > 0
        return f"{r[key] / b[key]:.3f}" if ok else "-"

    for r in rows:
        print(
            f"{r['kind']:<6}{r['n_res']:>7}{r['chunk']:>7}{r['status']:>8}{f(r, 'temp_gib'):>10}"
            f"{f(r, 'arg_gib'):>10}{f(r, 'peak_gib'):>10}{f(r, 'time_s'):>9}{ratio(r, 'temp_gib'):>8}"
            f"{ratio(r, 'peak_gib'):>8}{ratio(r, 'time_s'):>8}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="*", default=None, help="chain lengths (default 2048 4096 8192 10240)")
    p.add_argument("--chunk", type=int, nargs="*", default=None, help="chunk sizes; 0 = whole-array (default 0 64)")
    p.add_argument("--kinds", nargs="*", default=["embed", "sm"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: N=96, chunks 0 and 16, 1 repeat")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one, args.n[0], args.chunk[0], args.repeats)), flush=True)
        return 0
    if args.quick:
        args.repeats = 1
    ns = args.n or ([96] if args.quick else [2048, 4096, 8192, 10240])
    chunks = args.chunk if args.chunk is not None else ([0, 16] if args.quick else [0, 64])
    if 0 not in chunks:
        chunks = [0] + chunks  # the baseline every ratio is taken against

    device = device_kind()  # the cases run in their own processes
    rows = []
    for kind in args.kinds:
        for num_res in ns:
            for chunk in chunks:
                record(rows, spawn(kind, num_res, chunk, args))
    print_table(rows, device)
    write_results(args.out, "long-chain-embed-sm", {"device": device, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
