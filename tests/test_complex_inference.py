"""infer.py on complexes: FASTA records with ':' predicted by AlphaFold-Multimer presets (random parameters,
shrunk depth) from the per-chain alignments of 1YCR (MDM2 + p53) in shared/reference_multimer/inputs."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import MMCIFParser, PDBParser
from Bio.PDB.Polypeptide import index_to_one, three_to_index

from jaxfold import complex_inference, model_params, outputs, predict_command
from jaxfold.model.confidence import predicted_tm_score

MDM2 = "KEVLFYLGQYIMTKRLYDEKQQHIVYCSNDLLGDLF"  # 1YCR chain A (36 residues)
P53 = "ETFSDLWKLLPEN"  # 1YCR chain B (13 residues)
MODELS = ("model_1_multimer_v3", "model_2_multimer_v3")
SHRUNK = [
    "--evoformer-num-block",
    "1",
    "--extra-msa-stack-num-block",
    "1",
    "--structure-module-num-layer",
    "1",
    "--num-recycle",
    "0",
]


# One model run as cheaply as it goes: random parameters, the SHRUNK depth, XLA kernels, no compilation cache
# and no progress bar (the FASTA file, alignments and output folder are added per test).
RANDOM_SHRUNK_FLAGS = ["--params", "random", *SHRUNK, "--kernels", "xla", "--compilation-cache", "", "--no-progress"]


def _run_cli(args, capsys, monkeypatch):
    monkeypatch.delenv("JAXFOLD_PARAMS", raising=False)
    code = predict_command.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _fasta(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "complexes.fasta"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def complex_run(shared_dir, tmp_path_factory):
    """One run of two complexes: 1YCR (p53 first, to check that chains keep their FASTA order and letters)
    and a trimer whose third chain has no alignment folder (reported; the other complex still runs)."""
    tmp = tmp_path_factory.mktemp("complex")
    fasta = _fasta(tmp, f">p53_mdm2 p53 then MDM2\n{P53}:\n{MDM2}\n>trimer\n{MDM2}:{P53}:SGHTAHVDEAVKHAEEAVAH\n")
    out = tmp / "out"
    # Per-complex chain folders (find_chain_msa_dirs: <msa_dir>/<name>/<chain>): p53 is chain A here.
    inputs = shared_dir / "reference_multimer" / "inputs"
    msas = tmp / "msas"
    for name, folders in (("p53_mdm2", {"A": "B", "B": "A"}), ("trimer", {"A": "A", "B": "B"})):
        (msas / name).mkdir(parents=True)
        for chain, source in folders.items():
            (msas / name / chain).symlink_to(inputs / source, target_is_directory=True)
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.delenv("JAXFOLD_PARAMS", raising=False)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = predict_command.main(
                [
                    str(fasta),
                    "--params",
                    "random",
                    "--models",
                    ",".join(MODELS),
                    *SHRUNK,
                    "--msa-dir",
                    str(msas),
                    "--output-dir",
                    str(out),
                    "--compilation-cache",
                    str(tmp / "xla"),
                    "--no-progress",
                    "--kernels",
                    "xla",
                ]
            )
    return code, err.getvalue(), out


def _parse(path: Path):
    parser = PDBParser(QUIET=True) if path.suffix == ".pdb" else MMCIFParser(QUIET=True)
    return parser.get_structure("s", str(path))[0]


def test_complex_run_reports_the_failing_complex_and_predicts_the_other(complex_run):
    code, err, out = complex_run
    assert code == 1, err  # one complex failed
    assert "error: trimer" in err and "no alignment folder for chain C" in err
    assert "Traceback" not in err
    assert not (out / "trimer" / "ranking.json").exists()
    assert (out / "p53_mdm2" / "ranking.json").is_file()
    assert "1 predicted, 1 failed: trimer" in err


@pytest.mark.parametrize("suffix", ["pdb", "cif"])
def test_complex_structures_have_fasta_chains_and_plddt_b_factors(complex_run, suffix):
    _, _, out = complex_run
    ranking = json.loads((out / "p53_mdm2" / "ranking.json").read_text())
    for model in MODELS:
        structure = _parse(out / "p53_mdm2" / f"p53_mdm2_unrelaxed_{model}.{suffix}")
        chains = {chain.id: list(chain) for chain in structure}
        assert list(chains) == ["A", "B"]  # FASTA order: A = p53, B = MDM2 (the model's order is the same here)
        assert [len(chains["A"]), len(chains["B"])] == [len(P53), len(MDM2)]
        for chain_id, sequence in (("A", P53), ("B", MDM2)):
            residues = chains[chain_id]
            assert [r.id[1] for r in residues] == list(range(1, len(sequence) + 1))
            assert "".join(index_to_one(three_to_index(r.get_resname())) for r in residues) == sequence
        b_factors = np.array([r["CA"].get_bfactor() for c in ("A", "B") for r in chains[c]])
        per_chain = ranking["per_model"][model]["chain_plddt"]
        np.testing.assert_allclose(b_factors[: len(P53)].mean(), per_chain["A"], atol=0.01)
        np.testing.assert_allclose(b_factors[len(P53) :].mean(), per_chain["B"], atol=0.01)
        assert 0 <= b_factors.min() and b_factors.max() <= 100 and b_factors.std() > 0


def test_complex_ranking_pae_and_summary_files(complex_run):
    _, err, out = complex_run
    seq_dir = out / "p53_mdm2"
    ranking = json.loads((seq_dir / "ranking.json").read_text())
    assert ranking["warning"] == outputs.RANDOM_PARAMS_LABEL
    assert set(ranking["iptm+ptm"]) == set(MODELS) and "plddts" not in ranking
    for model in MODELS:
        entry = ranking["per_model"][model]
        assert ranking["iptm"][model] == entry["iptm"] and ranking["ptm"][model] == entry["ptm"]
        assert ranking["iptm+ptm"][model] == pytest.approx(0.8 * entry["iptm"] + 0.2 * entry["ptm"], abs=1e-6)
        assert set(entry["chain_pair_iptm"]) == {"A-B"} and set(entry["chain_pair_pae"]) == {"A-B"}
        # Two chains: the pair's ipTM is the complex's ipTM.
        assert entry["chain_pair_iptm"]["A-B"] == pytest.approx(entry["iptm"], abs=1e-4)
        pae = np.array(json.loads((seq_dir / f"p53_mdm2_pae_{model}.json").read_text())[0]["predicted_aligned_error"])
        n = len(P53) + len(MDM2)
        assert pae.shape == (n, n)
        interface = np.concatenate([pae[: len(P53), len(P53) :].ravel(), pae[len(P53) :, : len(P53)].ravel()])
        assert entry["chain_pair_pae"]["A-B"] == pytest.approx(interface.mean(), abs=0.06)  # json PAE: 1 decimal
    scores = ranking["iptm+ptm"]
    assert ranking["order"] == sorted(scores, key=scores.get, reverse=True)
    assert ranking["chains"] == [
        {"chain_id": "A", "length": len(P53), "entity_id": 1, "sym_id": 1},
        {"chain_id": "B", "length": len(MDM2), "entity_id": 2, "sym_id": 1},
    ]
    # Alignments read per distinct sequence: the chain folders of shared/reference_multimer/inputs (README: 24
    # UniProt rows each for pairing).
    assert set(ranking["info"]) == {"A", "B"}
    assert all(v["num_alignments"] > 1 and v["uniprot_rows"] == 24 for v in ranking["info"].values())
    timings = json.loads((seq_dir / "timings.json").read_text())
    assert timings["total"] > 0 and all(f"predict_{m}" in timings for m in MODELS)
    assert (seq_dir / "p53_mdm2_plddt.png").is_file() and (seq_dir / "p53_mdm2_pae.png").is_file()
    assert f"p53_mdm2: 2 model(s) written to {seq_dir}; best {ranking['order'][0]} (ipTM+pTM" in err


def test_complex_rerun_refuses_to_overwrite(complex_run, shared_dir, capsys, monkeypatch):
    _, _, out = complex_run
    fasta = out.parent / "complexes.fasta"
    code, err = _run_cli(
        [
            fasta,
            "--params",
            "random",
            "--models",
            MODELS[0],
            *SHRUNK,
            "--msa-dir",
            out.parent / "msas",
            "--output-dir",
            out,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 1 and "already in" in err and "--overwrite" in err


def test_outputs_follow_fasta_order_when_the_model_regroups_chains():
    """A=x, B=y, C=x: the model holds A, C, B; the writers get A, B, C back."""
    chains = [
        {"chain_id": "A", "input_index": 0, "sequence": "GG", "entity_id": 1, "sym_id": 1, "start": 0, "end": 2},
        {"chain_id": "C", "input_index": 2, "sequence": "GG", "entity_id": 1, "sym_id": 2, "start": 2, "end": 4},
        {"chain_id": "B", "input_index": 1, "sequence": "WWW", "entity_id": 2, "sym_id": 1, "start": 4, "end": 7},
    ]
    n = 7
    batch_order = np.arange(n, dtype=np.float32)  # value = residue's position in the model's batch
    pae = batch_order[:, None] * 10 + batch_order[None, :]
    model_out = {
        "structure_module/final_atom_positions": np.repeat(batch_order[:, None, None], 37, 1).repeat(3, 2),
        "structure_module/final_atom_mask": np.ones((n, 37)),
        "confidence/plddt": batch_order,
        "confidence/predicted_aligned_error": pae,
        "confidence/max_predicted_aligned_error": np.float32(31.75),
        "confidence/iptm": np.float32(0.5),
    }
    batch = {
        "aatype": batch_order.astype(np.int32),
        "residue_index": np.array([0, 1, 0, 1, 0, 1, 2]),
        "seq_mask": np.ones(n),
    }
    ordered, chain_ids = complex_inference.outputs_in_fasta_order(model_out, batch, chains)
    want = [0, 1, 4, 5, 6, 2, 3]  # A, B, C
    assert chain_ids == ["A", "B", "C"]
    np.testing.assert_array_equal(ordered["confidence/plddt"], want)
    np.testing.assert_array_equal(ordered["features/chain_index"], [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(ordered["features/residue_index"], [0, 1, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(
        ordered["confidence/predicted_aligned_error"], np.array(want)[:, None] * 10 + np.array(want)[None, :]
    )
    prot = outputs.make_protein(ordered, chain_ids=chain_ids)
    np.testing.assert_array_equal(prot.chain_index, [0, 0, 1, 1, 1, 2, 2])


def test_chain_pair_iptm_is_the_interface_ptm_of_the_two_chains():
    rng = np.random.default_rng(0)
    n, bins = 9, 64
    logits = rng.standard_normal((n, n, bins)).astype(np.float32)
    breaks = np.linspace(0, 31, bins - 1)
    chains = [
        {"chain_id": "A", "input_index": 0, "start": 0, "end": 3},
        {"chain_id": "B", "input_index": 1, "start": 3, "end": 5},
        {"chain_id": "C", "input_index": 2, "start": 5, "end": 9},
    ]
    pae = rng.uniform(0, 30, (n, n))
    result = complex_inference.chain_confidences(
        {
            "confidence/plddt": np.arange(n, dtype=float),
            "predicted_aligned_error/logits": logits,
            "predicted_aligned_error/breaks": breaks,
            "confidence/predicted_aligned_error": pae,
        },
        chains,
    )
    assert result["chain_plddt"] == {"A": 1.0, "B": 3.5, "C": 6.5}
    sub = np.r_[0:3, 5:9]
    want = predicted_tm_score(logits[np.ix_(sub, sub)], breaks, asym_id=np.r_[[0] * 3, [1] * 4], interface=True)
    assert result["chain_pair_iptm"]["A-C"] == pytest.approx(float(want), abs=1e-4)
    assert list(result["chain_pair_iptm"]) == ["A-B", "A-C", "B-C"]
    assert result["chain_pair_pae"]["B-C"] == pytest.approx(
        np.concatenate([pae[3:5, 5:9].ravel(), pae[5:9, 3:5].ravel()]).mean(), abs=1e-3
    )


@pytest.mark.parametrize(
    "fasta_text, flags, message",
    [
        (
            f">c\n{MDM2}:{P53}\n",
            ["--models", "model_1_ptm"],
            "complexes (FASTA records with ':') need AlphaFold-Multimer presets",
        ),
        (f">c\n{MDM2}:{P53}\n", ["--models", "tiny"], "need AlphaFold-Multimer presets"),
        (f">m\n{MDM2}\n", ["--models", "model_1_multimer_v3"], "AlphaFold-Multimer presets predict complexes"),
        (f">c\n{MDM2}:{P53}\n>m\n{MDM2}\n", [], "m: a single chain in a run of complexes"),
        (f">c\n{MDM2}::{P53}\n", [], "chain 2 (B) is empty"),
        (f">c\n{MDM2}:{P53}\n", ["--msa-mode", "single_sequence"], "complexes need per-chain alignments"),
    ],
)
def test_complex_cli_errors(tmp_path, shared_dir, capsys, monkeypatch, fasta_text, flags, message):
    fasta = _fasta(tmp_path, fasta_text)
    msa = [] if "--msa-mode" in flags else ["--msa-dir", shared_dir / "reference_multimer" / "inputs"]
    code, err = _run_cli(
        [fasta, "--params", "random", *msa, "--output-dir", tmp_path / "out", *flags], capsys, monkeypatch
    )
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "c").exists()  # refused before any work


def test_multimer_params_files_and_default_models(tmp_path):
    assert model_params.preset_of_params_file("params_model_3_multimer_v3.npz") == "model_3_multimer_v3"
    assert model_params.preset_of_params_file("params_model_3_ptm.npz") == "model_3_ptm"
    assert model_params.preset_of_params_file("params_model_1_ptm_shrunk.npz") == "model_1_ptm"
    for name in ("params_model_1_ptm.npz", "params_model_2_multimer_v3.npz", "params_model_4_multimer_v3.npz"):
        (tmp_path / name).write_bytes(b"")
    assert model_params.default_models(str(tmp_path)) == ["model_1_ptm"]
    assert model_params.default_models(str(tmp_path), multimer=True) == ["model_2_multimer_v3", "model_4_multimer_v3"]
    assert model_params.default_models("random", multimer=True) == ["model_1_multimer_v3"]
    assert model_params.resolve_params(str(tmp_path), "model_4_multimer_v3") == (
        tmp_path / "params_model_4_multimer_v3.npz"
    )
    with pytest.raises(model_params.InferenceError, match="is for model_2_multimer_v3, not model_2_ptm"):
        model_params.resolve_params(str(tmp_path / "params_model_2_multimer_v3.npz"), "model_2_ptm")


@pytest.mark.slow
def test_regrouped_heterotrimer_keeps_fasta_chains(shared_dir, tmp_path, capsys, monkeypatch):
    """MDM2:p53:MDM2: the model holds the chains as A, C, B (by entity); the files follow the FASTA."""
    inputs = shared_dir / "reference_multimer" / "inputs"
    (tmp_path / "msas" / "abc").mkdir(parents=True)
    for chain in ("A", "B"):  # C repeats A's sequence: AlphaFold reads the first copy's folder only
        (tmp_path / "msas" / "abc" / chain).symlink_to(inputs / chain, target_is_directory=True)
    fasta = _fasta(tmp_path, f">abc\n{MDM2}:{P53}:{MDM2}\n")
    code, err = _run_cli(
        [fasta, *RANDOM_SHRUNK_FLAGS, "--msa-dir", tmp_path / "msas", "--output-dir", tmp_path / "out"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    seq_dir = tmp_path / "out" / "abc"
    structure = _parse(seq_dir / "abc_unrelaxed_model_1_multimer_v3.pdb")
    sequences = {c.id: "".join(index_to_one(three_to_index(r.get_resname())) for r in c) for c in structure}
    assert sequences == {"A": MDM2, "B": P53, "C": MDM2}
    ranking = json.loads((seq_dir / "ranking.json").read_text())
    assert [c["entity_id"] for c in ranking["chains"]] == [1, 2, 1]
    assert [c["sym_id"] for c in ranking["chains"]] == [1, 1, 2]
    assert set(ranking["per_model"]["model_1_multimer_v3"]["chain_pair_iptm"]) == {"A-B", "A-C", "B-C"}
    pae = np.array(json.loads((seq_dir / "abc_pae_model_1_multimer_v3.json").read_text())[0]["predicted_aligned_error"])
    assert pae.shape == (2 * len(MDM2) + len(P53),) * 2


@pytest.mark.slow
def test_homodimer_3u8v_from_its_chain_a_alignments(shared_dir, tmp_path, capsys, monkeypatch):
    """3u8v as a homodimer: both copies read shared/data/msas/3u8v_A (found as <msa_dir>/<name>_A)."""
    sequence = "".join((shared_dir / "data" / "seqs" / "3u8v_A.fasta").read_text().splitlines()[1:])
    fasta = _fasta(tmp_path, f">3u8v\n{sequence}:{sequence}\n")
    code, err = _run_cli(
        [fasta, *RANDOM_SHRUNK_FLAGS, "--msa-dir", shared_dir / "data" / "msas", "--output-dir", tmp_path / "out"]
        + ["--no-plots"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    seq_dir = tmp_path / "out" / "3u8v"
    structure = _parse(seq_dir / "3u8v_unrelaxed_model_1_multimer_v3.cif")
    assert {c.id: len(c) for c in structure} == {"A": len(sequence), "B": len(sequence)}
    ranking = json.loads((seq_dir / "ranking.json").read_text())
    assert [(c["entity_id"], c["sym_id"]) for c in ranking["chains"]] == [(1, 1), (1, 2)]
    assert list(ranking["info"]) == ["A"] and not ranking["info"]["A"]["uniprot_rows"]  # homomers pair nothing
    entry = ranking["per_model"]["model_1_multimer_v3"]
    assert entry["chain_pair_iptm"]["A-B"] == pytest.approx(entry["iptm"], abs=1e-4)
