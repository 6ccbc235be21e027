"""AlphaFold-Multimer inference on one accelerator: a ~1,000-residue complex, fp32 vs bf16.

    python -m bench.multimer [--n-res 1000] [--dtypes float32 bfloat16] [--num-recycle 3] [--repeats 2]
    python -m bench.multimer --quick        # CPU smoke run in a few minutes (tiny depth, 100 residues, 2 chains)

What runs: `jaxfold.model.predict.predict` (the one prediction path) on a multimer config, with the full
`model_1_multimer_v3` network (48 Evoformer blocks, 4 extra-MSA blocks, 8 structure-module layers, 508 MSA
clusters and 2,048 extra sequences sampled inside the model, 4 template slots) on random parameters (the
timing does not depend on the weights). Recycling: `--num-recycle` passes are forced (early stop off), so
the time is (num_recycle + 1) passes; the table also gives the time per pass.

The complex: real chains from shared/data (`seqs/<target>.fasta` with their `msas/<target>/` alignments),
taken in a fixed order and repeated (homomer copies get the same entity, increasing sym_id) until `--n-res`
residues; the last chain is cut to fit. The MSA is the paired query row plus each chain's own alignment rows
placed block-diagonally (gaps elsewhere), as AlphaFold-Multimer merges unpaired MSAs, then padded with
masked rows to 508 + 2,048 rows so the sampled cluster and extra-MSA sizes (which set the cost) are the
shipped ones. Templates: 4 empty slots (an empty slot costs what a real one does).

Each dtype runs in its own process (so its peak memory is its own): wall time of the first call (compile +
run), median of `--repeats` further calls, peak device memory (`memory_stats()["peak_bytes_in_use"]` where
the backend reports it). Prints a table with the bf16/fp32 ratio and writes
`bench/results/multimer-<device>-<UTC stamp>.json` (commit, device, jax version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench._common import REPO, last_json_line, median, peak_bytes, run_module, timed, write_results

# Chains with a real query sequence and MSA in shared/data, in the order they are used.
TARGETS = ("4i6p_A", "3zee_A", "4zey_A", "2crb_A", "3u8v_A", "1psm_A", "2q2k_A", "102m_A", "1k1a_A")
MSA_FILES = ("uniref90_hits.sto", "bfd_uniclust_hits.a3m", "mgnify_hits.sto", "non_pairing.a3m")
QUICK = {
    "evoformer_num_block": 1,
    "extra_msa_stack_num_block": 1,
    "template_pair_stack_num_block": 1,
    "structure_module_num_layer": 1,
    "model.embeddings_and_evoformer.num_msa": 16,
    "model.embeddings_and_evoformer.num_extra_msa": 32,
}


def shared_data() -> Path:
    return Path(os.environ.get("JAXFOLD_SHARED") or REPO.parent / "shared") / "data"


def chain_msa(target: str, max_rows: int) -> tuple[str, list[str], list[list[int]]]:
    """(query sequence, aligned rows, deletion rows) of one shared/data target, query first."""
    from jaxfold.data import parsers  # noqa: PLC0415

    data = shared_data()
    query = parsers.read_fasta(data / "seqs" / f"{target}.fasta")[0].sequence
    rows, deletions = [query], [[0] * len(query)]
    for name in MSA_FILES:
        path = data / "msas" / target / name
        if not path.is_file():
            continue
        text = path.read_text()
        msa = parsers.parse_a3m(text) if name.endswith(".a3m") else parsers.parse_stockholm(text)
        for seq, dels in zip(msa.sequences[1:], msa.deletion_matrix[1:]):
            if len(rows) >= max_rows:
                break
            rows.append(seq)
            deletions.append(list(dels))
    return query, rows, deletions


def build_features(n_res: int, num_rows: int, num_templates: int = 4):
    """The multimer batch (DeepMind's layout, see the module doc) and a description of the complex."""
    import numpy as np  # noqa: PLC0415

    from jaxfold.common import residue_constants as rc  # noqa: PLC0415

    def encode(seq: str) -> list[int]:
        return [rc.restype_order_with_x.get(a, 20) if a != "-" else 21 for a in seq]

    chains, total, entities = [], 0, {}
    while total < n_res:
        target = TARGETS[len(chains) % len(TARGETS)]
        query, rows, dels = chain_msa(target, max_rows=num_rows)
        length = min(len(query), n_res - total)
        entity = entities.setdefault(target, len(entities) + 1)
        sym = sum(1 for c in chains if c["target"] == target) + 1
        chains.append(
            {
                "target": target,
                "length": length,
                "entity": entity,
                "sym": sym,
                "rows": [r[:length] for r in rows],
                "dels": [d[:length] for d in dels],
            }
        )
        total += length
    msa = np.full((num_rows, n_res), 21, np.int32)
    deletion = np.zeros((num_rows, n_res), np.float32)
    mask = np.zeros((num_rows, n_res), np.float32)
    start, row = 0, 1
    msa[0] = np.concatenate([encode(c["rows"][0]) for c in chains])
    mask[0] = 1.0
    for c in chains:
        stop = start + c["length"]
        for seq, dels in zip(c["rows"][1:], c["dels"][1:]):
            if row >= num_rows:
                break
            msa[row, start:stop] = encode(seq)
            deletion[row, start:stop] = dels
            mask[row] = 1.0
            row += 1
        start = stop
    ids = {
        key: np.concatenate([np.full(c["length"], value(c), np.float32) for c in chains])
        for key, value in (
            ("asym_id", lambda c: chains.index(c) + 1),
            ("entity_id", lambda c: c["entity"]),
            ("sym_id", lambda c: c["sym"]),
        )
    }
    features = {
        "aatype": msa[0].copy(),
        "residue_index": np.concatenate([np.arange(c["length"]) for c in chains]),
        "seq_mask": np.ones(n_res, np.float32),
        **ids,
        "msa": msa,
        "deletion_matrix": deletion,
        "msa_mask": mask,
        "bert_mask": mask.copy(),
        "cluster_bias_mask": np.eye(1, num_rows, dtype=np.float32)[0],
        "template_aatype": np.zeros((num_templates, n_res), np.int32),
        "template_all_atom_positions": np.zeros((num_templates, n_res, 37, 3), np.float32),
        "template_all_atom_mask": np.zeros((num_templates, n_res, 37), np.float32),
    }
    complex_ = {
        "chains": [f"{c['target']}[:{c['length']}] entity {c['entity']} sym {c['sym']}" for c in chains],
        "msa_rows_with_residues": int(row),
        "msa_rows_total": num_rows,
    }
    return features, complex_


def run_variant(args) -> dict:
    """One dtype in this process: compile+run time, steady time, peak memory."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.model.init import init_params  # noqa: PLC0415
    from jaxfold.model.predict import predict  # noqa: PLC0415

    overrides = dict(QUICK) if args.quick else {}
    cfg = model_config(
        "model_1_multimer_v3",
        dtype=args.dtype,
        num_recycle=args.num_recycle,
        **{"model.recycle_early_stop_tolerance": 0.0},
        **overrides,
    )
    emb = cfg.model.embeddings_and_evoformer
    features, complex_ = build_features(args.n_res, emb.num_msa + emb.num_extra_msa)
    params = jax.jit(lambda: init_params(cfg))()

    outs = []  # the first call's outputs, checked below
    timings: dict = {}

    def call():
        out = predict(
            cfg,
            params,
            features,
            rng=jax.random.PRNGKey(0),
            kernels=args.kernels,
            chunk_size=args.chunk_size,
            timings=timings,
        )
        if not outs:
            outs.append(out)
        return out

    first, times = timed(call, repeats=args.repeats)
    out = outs[0]
    device = jax.devices()[0]
    steady = median(times)
    passes = int(out["num_recycles"]) + 1
    return {
        "dtype": args.dtype,
        "n_res": args.n_res,
        "num_chains": len(complex_["chains"]),
        "complex": complex_,
        "shapes": {
            "evoformer_blocks": emb.evoformer_num_block,
            "extra_msa_blocks": emb.extra_msa_stack_num_block,
            "msa_clusters": emb.num_msa,
            "extra_msa": emb.num_extra_msa,
            "templates": 4,
            "structure_layers": cfg.model.heads.structure_module.num_layer,
        },
        "passes": passes,
        "first_call_s": first,
        "steady_s": steady,
        "per_pass_s": steady / passes,
        "repeats_s": times,
        "peak_bytes_in_use": peak_bytes([device]),
        "finite": bool(np.isfinite(out["structure_module/final_atom_positions"]).all()),
        "kernels": args.kernels,
        "chunk_size": getattr(timings.get("settings"), "chunk_size", args.chunk_size),
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-res", type=int, default=1000)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--num-recycle", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kernels", default="auto", choices=["auto", "xla", "pallas"])
    parser.add_argument(
        "--chunk-size", default="auto", type=lambda v: v if v == "auto" else int(v), help="auto (default), N, 0 = none"
    )
    parser.add_argument("--quick", action="store_true", help="tiny depth, 100 residues (2 chains), for a CPU check")
    parser.add_argument("--out", default=None, help="JSON file or folder (default bench/results/)")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = parser.parse_args()
    if args.quick and args.n_res == 1000:
        args.n_res, args.num_recycle, args.repeats = 100, 1, 1
    if args.dtype:
        print("RESULT " + json.dumps(run_variant(args)))
        return
    rows = []
    for dtype in args.dtypes:
        proc = run_module(
            "multimer",
            [
                "--dtype",
                dtype,
                "--n-res",
                str(args.n_res),
                "--num-recycle",
                str(args.num_recycle),
                "--repeats",
                str(args.repeats),
                "--kernels",
                args.kernels,
                "--chunk-size",
                str(args.chunk_size),
            ]
            + (["--quick"] if args.quick else []),
        )
        row = last_json_line(proc.stdout, "RESULT ")
        if proc.returncode or row is None:
            rows.append({"dtype": dtype, "error": (proc.stderr or proc.stdout)[-2000:]})
            print(f"{dtype}: FAILED\n{rows[-1]['error']}", file=sys.stderr)
            continue
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    base = next((r for r in ok if r["dtype"] == "float32"), None)
    print(
        f"\nAlphaFold-Multimer inference, {args.n_res} residues"
        + (f", {ok[0]['num_chains']} chains, device {ok[0]['device']}" if ok else "")
    )
    if ok:
        print(f"shapes: {ok[0]['shapes']}; passes {ok[0]['passes']} (num_recycle {args.num_recycle}, early stop off)")
    print(
        f"{'dtype':<10}{'chunk':>7}{'compile+run s':>15}{'steady s':>11}"
        f"{'per pass s':>12}{'peak GiB':>10}{'vs fp32':>9}"
    )
    for r in ok:
        peak = r["peak_bytes_in_use"] / 2**30 if r["peak_bytes_in_use"] else float("nan")
        ratio = r["steady_s"] / base["steady_s"] if base else float("nan")
        print(
            f"{r['dtype']:<10}{r['chunk_size']:>7}{r['first_call_s']:>15.2f}{r['steady_s']:>11.3f}{r['per_pass_s']:>12.3f}"
            f"{peak:>10.2f}{ratio:>9.2f}"
        )
    write_results(
        args.out,
        "multimer",
        {"device": ok[0]["device"] if ok else "unknown", "args": vars(args), "rows": rows},
        suffix="-quick" if args.quick else "",
    )


if __name__ == "__main__":
    main()
