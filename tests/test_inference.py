"""FASTA -> features -> model -> files: `jaxfold.data.pipeline`, `jaxfold.inference` and `infer.py`.

End to end on real inputs: 1psm_A (38 residues) with its precomputed AlphaFold MSAs, DeepMind's
official-format parameters (the shrunk reference file) and the whole writer set, read back with
Biopython. `infer.py` itself runs as a subprocess once (random parameters, the `tiny`
architecture) and in-process for its error paths, which fail before any compilation.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxfold import inference, model_params, outputs
from jaxfold.common import files
from jaxfold.common import residue_constants as rc
from jaxfold.config import model_config
from jaxfold.data import parsers
from jaxfold.data.pipeline import PipelineError, build_raw_features, preprocess_many
from jaxfold.progress import NO_PROGRESS
from jaxfold.weights import load_alphafold_params

REPO = Path(__file__).resolve().parents[1]
SHRINK = dict(evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2)
SHRINK_FLAGS = ["--evoformer-num-block", "2", "--extra-msa-stack-num-block", "1", "--structure-module-num-layer", "2"]
NAME = "1psm_A"
SEQUENCE = "EAYKKAKQASQDAEQAAKDAENASKEAEEAAKEAVNLK"


def _load_infer():
    spec = importlib.util.spec_from_file_location("infer_cli", REPO / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer_cli = _load_infer()


@pytest.fixture(scope="module")
def data(shared_dir):
    return shared_dir / "data"


@pytest.fixture(scope="module")
def params_file(shared_dir):
    return shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz"


@pytest.fixture(scope="module")
def shrunk(params_file):
    config = model_config("model_1_ptm", num_recycle=1, **SHRINK)
    return config, load_alphafold_params(params_file, config)


# ---------------------------------------------------------------------------------------------
# Data pipeline.
# ---------------------------------------------------------------------------------------------


def test_raw_features_have_alphafolds_layout(data, shared_dir):
    record = parsers.read_fasta(data / "seqs" / f"{NAME}.fasta")[0]
    timings, info = {}, {}
    raw = build_raw_features(record, "precomputed", msa_dir=data / "msas", timings=timings, info=info)
    reference = np.load(shared_dir / "reference" / "features_raw.npz", allow_pickle=True)
    assert set(raw) == set(reference.files)
    for key in reference.files:
        assert raw[key].ndim == reference[key].ndim, key
        assert raw[key].shape[1:] == reference[key].shape[1:] or key in (
            "aatype",
            "residue_index",
            "seq_length",
            "between_segment_residues",
            "num_alignments",
            "deletion_matrix_int",
            "msa",
            "template_aatype",
            "template_all_atom_masks",
            "template_all_atom_positions",
        ), key
    n = len(SEQUENCE)
    assert raw["aatype"].shape == (n, 21)
    assert "".join(rc.restypes_with_x[i] for i in raw["aatype"].argmax(-1)) == SEQUENCE
    assert raw["msa"].shape == (info["num_alignments"], n) and raw["msa"].shape[0] > 20
    assert info["msa_depth"] == {"uniref90": 20, "bfd_uniclust": 12, "mgnify": 9}
    assert raw["template_aatype"].shape == (0, n, 22)  # no mmCIF folder: no templates
    assert set(timings) == {"msa", "templates"}


def test_templates_from_hits_and_mmcif(data):
    record = parsers.read_fasta(data / "seqs" / "openfold_short.fasta")[0]
    info = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = build_raw_features(
            record,
            "precomputed",
            msa_dir=data / "msas" / "openfold_short",
            template_mmcif_dir=data / "structures" / "mmcif",
            max_template_date="2100-01-01",
            info=info,
        )
    assert info["template_hits_file"].endswith("pdb70_hits.hhr")
    assert len(info["templates"]) >= 3 and "2crb_A" in info["templates"]
    t = len(info["templates"])
    assert raw["template_aatype"].shape == (t, len(record.sequence), 22)
    assert raw["template_all_atom_positions"].shape == (t, len(record.sequence), 37, 3)
    assert raw["template_all_atom_masks"].sum() > 0
    with pytest.raises(PipelineError, match="no mmCIF folder"):
        build_raw_features(record, "single_sequence", template_hits_path=data / "msas" / "openfold_short")


def test_pipeline_errors_name_the_problem(data, tmp_path):
    record = parsers.FastaRecord("x", "x", "ACDJ")
    with pytest.raises(PipelineError, match="illegal residue letter.*'J'"):
        build_raw_features(record)
    good = parsers.FastaRecord(NAME, NAME, SEQUENCE)
    with pytest.raises(PipelineError, match="MSA folder not found"):
        build_raw_features(good, "precomputed", msa_dir=tmp_path / "nope")
    with pytest.raises(PipelineError, match="needs at least one database"):
        build_raw_features(good, "search")


def test_preprocess_many_parallel_yields_all_and_reports_failures(data, tmp_path):
    records = [
        parsers.FastaRecord(NAME, NAME, SEQUENCE),
        parsers.FastaRecord("unknown_target", "unknown_target", "ACDEFGHIK"),
        parsers.FastaRecord("2q2k_A", "2q2k_A", parsers.read_fasta(data / "seqs" / "2q2k_A.fasta")[0].sequence),
    ]
    results = list(preprocess_many(records, workers=2, msa_mode="precomputed", msa_dir=data / "msas"))
    assert sorted(r.index for r in results) == [0, 1, 2]
    by_name = {r.record.name: r for r in results}
    assert not by_name["unknown_target"].ok
    assert by_name["unknown_target"].error.startswith("unknown_target: No alignment")
    serial = build_raw_features(records[0], "precomputed", msa_dir=data / "msas")
    parallel = by_name[NAME].features
    for key in serial:
        np.testing.assert_array_equal(np.asarray(parallel[key]), np.asarray(serial[key]), err_msg=key)
    assert by_name["2q2k_A"].ok and by_name["2q2k_A"].timings["preprocess"] > 0


def test_ray_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(PipelineError, match="needs the 'ray' package"):
        list(preprocess_many([parsers.FastaRecord("a", "a", "ACD")], use_ray=True))


# ---------------------------------------------------------------------------------------------
# Model: the per-recycle loop against DeepMind's outputs, and MSA padding.
# ---------------------------------------------------------------------------------------------


def _pad_rows(features, msa_rows, extra_rows):
    """AlphaFold's fixed-size padding: zero rows (mask 0) appended to the MSA and extra-MSA features."""
    padded = dict(features)
    for keys, rows in ((inference._MSA_ROW_FEATURES, msa_rows), (inference._EXTRA_ROW_FEATURES, extra_rows)):
        for key in keys:
            x = padded[key]
            pad = [(0, 0)] * x.ndim
            pad[1] = (0, rows)
            padded[key] = np.pad(x, pad)
    return padded


def test_predict_matches_deepminds_outputs(shared_dir, shrunk):
    """The per-recycle loop equals DeepMind's outputs, also on a batch padded as AlphaFold pads
    shallow MSAs (so trimming those rows, the default, cannot change a prediction)."""
    config, params = shrunk
    features = dict(np.load(shared_dir / "reference" / "features.npz"))
    reference = np.load(shared_dir / "reference" / "outputs.npz")
    padded = _pad_rows(features, msa_rows=4, extra_rows=5)
    assert padded["msa_feat"].shape[1] == 12 and padded["extra_msa"].shape[1] == 21
    trimmed = inference.trim_msa_rows(padded)
    assert set(trimmed) == set(features)
    for key in features:
        np.testing.assert_array_equal(trimmed[key], features[key], err_msg=key)
    timings = {}
    out = inference.predict(padded, config, params, timings=timings, trim_msa_padding=False)
    for key, atol in (
        ("structure_module/final_atom_positions", 1e-3),
        ("confidence/plddt", 1e-3),
        ("confidence/predicted_aligned_error", 1e-3),
        ("confidence/ptm", 1e-5),
        ("representations/pair", 1e-4),
        ("distogram/logits", 1e-4),
    ):
        np.testing.assert_allclose(out[key], reference[key], rtol=1e-4, atol=atol, err_msg=key)
    assert out["masked_msa/logits"].shape[0] == 12
    assert {"compile", "recycle_0", "recycle_1", "predict"} <= set(timings)


def test_trim_msa_rows_keeps_every_valid_row():
    rng = np.random.default_rng(0)
    batch = {
        "msa_feat": rng.normal(size=(2, 6, 3, 49)),
        "msa_row_mask": np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        "msa_mask": np.ones((2, 6, 3)),
        "extra_msa": np.zeros((2, 4, 3), np.int32),
        "extra_msa_row_mask": np.zeros((2, 4)),
        "aatype": np.zeros((2, 3), np.int32),
    }
    trimmed = inference.trim_msa_rows(batch)
    assert trimmed["msa_feat"].shape[1] == 4 and trimmed["msa_mask"].shape[1] == 4
    np.testing.assert_array_equal(trimmed["msa_feat"], batch["msa_feat"][:, :4])
    assert trimmed["extra_msa"].shape[1] == 1  # no valid extra row: one masked row is kept
    assert trimmed["aatype"] is batch["aatype"]


# ---------------------------------------------------------------------------------------------
# End to end: FASTA + MSAs -> two models -> files.
# ---------------------------------------------------------------------------------------------


def _boost_plddt(params):
    """A second parameter set whose pLDDT head favours the top bins: ranks first, deterministically."""
    boosted = copy.deepcopy(params)
    bias = np.array(boosted["alphafold_iteration"]["predicted_lddt_head"]["logits"]["bias"])
    bias[-10:] += 3.0
    boosted["alphafold_iteration"]["predicted_lddt_head"]["logits"]["bias"] = bias
    return boosted


@pytest.fixture(scope="module")
def e2e(data, shrunk, params_file, tmp_path_factory):
    config, params = shrunk
    out_dir = tmp_path_factory.mktemp("predictions")
    specs = [
        inference.ModelSpec("model_1_ptm", config, params, path=params_file),
        inference.ModelSpec(
            "model_2_ptm", model_config("model_2_ptm", num_recycle=1, **SHRINK), _boost_plddt(params), path=params_file
        ),
    ]
    records = inference.load_records([data / "seqs" / f"{NAME}.fasta"])
    options = dict(msa_mode="precomputed", msa_dir=str(data / "msas"))
    reports = inference.run_inference(records, specs, out_dir, pipeline_options=options, params=None, seed=0)
    return out_dir, reports, specs, records, options


def test_e2e_writes_every_file(e2e):
    out_dir, reports, *_ = e2e
    (report,) = reports
    assert report.error is None
    seq_dir = out_dir / NAME
    names = {p.name for p in seq_dir.iterdir()}
    expected = {
        f"{NAME}_unrelaxed_model_1_ptm.pdb",
        f"{NAME}_unrelaxed_model_1_ptm.cif",
        f"{NAME}_unrelaxed_model_2_ptm.pdb",
        f"{NAME}_unrelaxed_model_2_ptm.cif",
        f"{NAME}_pae_model_1_ptm.json",
        f"{NAME}_pae_model_2_ptm.json",
        "ranking.json",
        "timings.json",
    }
    if outputs._figure_class() is not None:
        expected |= {f"{NAME}_plddt.png", f"{NAME}_pae.png"}
        for png in (f"{NAME}_plddt.png", f"{NAME}_pae.png"):
            assert (seq_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert names == expected  # and no temporary files left behind


def _plddt_of(seq_dir, model):
    """The mean pLDDT ranking.json gives ``model``."""
    return json.loads((seq_dir / "ranking.json").read_text())["plddts"][model]


def test_e2e_structures_parse_back_with_plddt_bfactors(e2e, shrunk):
    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict
    from Bio.SeqUtils import seq1

    out_dir, _, specs, records, options = e2e
    seq_dir = out_dir / NAME
    # Recompute model_1_ptm's outputs (cached compilation) to compare against the files.
    raw = build_raw_features(records[0], **options)
    outputs = inference.predict(raw, specs[0].config, specs[0].params, seed=0)
    plddt = outputs["confidence/plddt"]
    mask = outputs["structure_module/final_atom_mask"] > 0.5
    for parser, suffix in ((PDBParser(QUIET=True), "pdb"), (MMCIFParser(QUIET=True), "cif")):
        structure = parser.get_structure(NAME, str(seq_dir / f"{NAME}_unrelaxed_model_1_ptm.{suffix}"))
        residues = list(structure[0]["A"])
        assert [r.id[1] for r in residues] == list(range(1, len(SEQUENCE) + 1))
        assert "".join(seq1(r.get_resname()) for r in residues) == SEQUENCE
        assert sum(len(r) for r in residues) == int(mask.sum())
        for i, residue in enumerate(residues):
            for atom in residue:
                assert atom.get_bfactor() == pytest.approx(plddt[i], abs=0.006)
                j = rc.atom_order[atom.get_id()]
                np.testing.assert_allclose(
                    atom.coord, outputs["structure_module/final_atom_positions"][i, j], atol=6e-4
                )
    cif = MMCIF2Dict(str(seq_dir / f"{NAME}_unrelaxed_model_1_ptm.cif"))
    assert "model_1_ptm" in cif["_struct.title"][0] or "model_1_ptm" in cif["_struct.entry_id"][0]
    pdb_text = (seq_dir / f"{NAME}_unrelaxed_model_1_ptm.pdb").read_text()
    assert "RANDOM" not in pdb_text and pdb_text.startswith("REMARK   1 jaxfold")
    # infer.py pads to a length bucket (38 -> 64 residues): the same prediction to float round-off.
    assert _plddt_of(seq_dir, "model_1_ptm") == pytest.approx(float(np.mean(plddt)), abs=1e-4)


def test_e2e_pae_json_has_the_alphafold_db_layout(e2e):
    out_dir, *_ = e2e
    doc = json.loads((out_dir / NAME / f"{NAME}_pae_model_1_ptm.json").read_text())
    assert isinstance(doc, list) and len(doc) == 1
    entry = doc[0]
    assert set(entry) == {"predicted_aligned_error", "max_predicted_aligned_error"}
    pae = np.array(entry["predicted_aligned_error"])
    assert pae.shape == (len(SEQUENCE), len(SEQUENCE))
    np.testing.assert_array_equal(pae, np.round(pae, 1))  # rounded to 0.1 A as the DB does
    assert 0 <= pae.min() and pae.max() <= entry["max_predicted_aligned_error"]
    assert entry["max_predicted_aligned_error"] == pytest.approx(31.75)
    text = (out_dir / NAME / f"{NAME}_pae_model_1_ptm.json").read_text()
    assert " " not in text  # compact, as AlphaFold's pae_json


def test_e2e_ranking_and_timings(e2e):
    out_dir, reports, *_ = e2e
    ranking = json.loads((out_dir / NAME / "ranking.json").read_text())
    assert set(ranking) >= {"plddts", "ptm", "order"}
    assert set(ranking["plddts"]) == set(ranking["ptm"]) == {"model_1_ptm", "model_2_ptm"}
    assert ranking["order"] == sorted(ranking["plddts"], key=ranking["plddts"].get, reverse=True)
    assert ranking["order"][0] == "model_2_ptm"  # its pLDDT head was boosted
    assert all(0 < v < 1 for v in ranking["ptm"].values())
    assert ranking == {**ranking, **reports[0].ranking}
    timings = json.loads((out_dir / NAME / "timings.json").read_text())
    for model in ("model_1_ptm", "model_2_ptm"):
        for stage in ("process_features", "compile", "recycle_0", "recycle_1", "predict", "write"):
            assert f"{stage}_{model}" in timings
    assert {"features", "msa", "templates", "total"} <= set(timings)
    assert all(v >= 0 for v in timings.values())


def test_e2e_refuses_to_overwrite_then_overwrites(e2e):
    out_dir, _, specs, records, options = e2e
    seq_dir = out_dir / NAME
    before = {p.name: p.read_bytes() for p in seq_dir.iterdir()}
    with pytest.raises(inference.OutputExistsError, match="--overwrite"):
        inference.run_inference(records, specs, out_dir, pipeline_options=options, params=None)
    assert {p.name: p.read_bytes() for p in seq_dir.iterdir()} == before
    reports = inference.run_inference(
        records, specs[:1], out_dir, pipeline_options=options, params=None, overwrite=True, plots=False
    )
    assert reports[0].error is None
    after = {p.name: p.read_bytes() for p in seq_dir.iterdir()}
    assert set(after) == set(before)  # the other model's files and the plots are kept, not deleted
    assert after[f"{NAME}_unrelaxed_model_2_ptm.pdb"] == before[f"{NAME}_unrelaxed_model_2_ptm.pdb"]
    assert after[f"{NAME}_unrelaxed_model_1_ptm.pdb"] == before[f"{NAME}_unrelaxed_model_1_ptm.pdb"]


# ---------------------------------------------------------------------------------------------
# Writers: atomicity, missing matplotlib.
# ---------------------------------------------------------------------------------------------


def _fake_outputs(n=5, ptm=True, shift=0.0):
    rng = np.random.default_rng(int(shift * 10))
    aatype = np.arange(n) % 20
    out = {
        "structure_module/final_atom_positions": rng.normal(size=(n, 37, 3)).astype(np.float32) * 5,
        "structure_module/final_atom_mask": rc.restype_atom37_mask[aatype].astype(np.float32),
        "confidence/plddt": np.linspace(40, 90, n) + shift,
        "features/aatype": aatype,
        "features/residue_index": np.arange(n),
        "features/seq_mask": np.ones(n, np.float32),
    }
    out["confidence/ranking_confidence"] = np.mean(out["confidence/plddt"])
    if ptm:
        out["confidence/predicted_aligned_error"] = rng.uniform(0, 30, size=(n, n)).astype(np.float32)
        out["confidence/max_predicted_aligned_error"] = np.float32(31.75)
        out["confidence/ptm"] = np.float64(0.5)
    return out


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    files.atomic_write(target, "old\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        files.atomic_write(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_crash_while_writing_a_model_keeps_earlier_outputs(tmp_path, monkeypatch):
    first = _fake_outputs()
    outputs.write_model_outputs(tmp_path, "x", "model_1_ptm", first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(outputs, "to_mmcif_string", fail)
    with pytest.raises(RuntimeError):
        outputs.write_model_outputs(tmp_path, "x", "model_1_ptm", _fake_outputs(shift=1.0))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(after) == set(before)
    assert after["x_unrelaxed_model_1_ptm.cif"] == before["x_unrelaxed_model_1_ptm.cif"]


def test_make_protein_from_raw_or_processed_features(tmp_path):
    out = _fake_outputs(n=4)
    bare = {k: v for k, v in out.items() if not k.startswith("features/")}
    raw = {"aatype": np.eye(21)[out["features/aatype"]], "residue_index": np.arange(4)}
    processed = {
        "aatype": out["features/aatype"][None],
        "residue_index": np.arange(4)[None],
        "seq_mask": np.ones((1, 4)),
        "msa_feat": 0,
        "target_feat": 0,
    }
    for features in (raw, processed):
        prot = outputs.make_protein(bare, features)
        np.testing.assert_array_equal(prot.aatype, out["features/aatype"])
        np.testing.assert_array_equal(prot.residue_index, [1, 2, 3, 4])
        np.testing.assert_allclose(prot.b_factors[:, 0], out["confidence/plddt"], atol=1e-5)


def test_plots_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_figure_class", lambda: None)
    results = {"model_1": _fake_outputs(ptm=False), "model_2": _fake_outputs(ptm=False, shift=5.0)}
    with pytest.warns(RuntimeWarning, match="matplotlib is not installed"):
        written = outputs.write_sequence_summary(tmp_path, "x", results, {"total": 1.0})
    assert sorted(p.name for p in written) == ["ranking.json", "timings.json"]
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert ranking["order"] == ["model_2", "model_1"] and "ptm" not in ranking


@pytest.mark.parametrize("random_params", [False, True])
def test_plots_show_their_title_and_the_random_parameters_warning(tmp_path, monkeypatch, random_params):
    figure_class = outputs._figure_class()
    if figure_class is None:
        pytest.skip("matplotlib is not installed")
    figures = []

    def recording_figure(*args, **kwargs):
        figures.append(figure_class(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(outputs, "_figure_class", lambda: recording_figure)
    results = {"model_1_ptm": _fake_outputs(), "model_2_ptm": _fake_outputs(shift=5.0)}
    order = ["model_2_ptm", "model_1_ptm"]
    plddt = outputs.plot_plddt(tmp_path / "plddt.png", "x", results, order, random_params=random_params)
    pae = outputs.plot_pae(tmp_path / "pae.png", "x", results, order, random_params=random_params)
    shown = [figures[0].axes[0].title, figures[1]._suptitle]  # the pLDDT axes' title, the PAE figure's
    for path, text, title in ((plddt, shown[0], "x: predicted lDDT"), (pae, shown[1], "x: predicted aligned error")):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and title.encode() in data  # PNG text chunk: the title
        assert (outputs.RANDOM_PARAMS_LABEL_ASCII.encode() in data) == random_params
        expected = f"{outputs.RANDOM_PARAMS_LABEL}\n{title}" if random_params else title
        assert text.get_text() == expected
        assert text.get_color() == ("red" if random_params else "black")


# ---------------------------------------------------------------------------------------------
# infer.py
# ---------------------------------------------------------------------------------------------


# `infer.py` on the bundled example with random parameters and the tiny preset: one recycle, no compilation
# cache, no progress bar (the output folder and any other flags are added per test).
RANDOM_TINY_FLAGS = "--params random --models tiny --num-recycle 1 --no-progress".split() + ["--compilation-cache", ""]


def _run_cli(args, capsys, monkeypatch):
    monkeypatch.delenv("JAXFOLD_PARAMS", raising=False)
    code = infer_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """`python infer.py --params random --models tiny` on the bundled example, as a user runs it."""
    out_dir = tmp_path_factory.mktemp("random")
    env = dict(os.environ)
    env.pop("JAXFOLD_PARAMS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), *RANDOM_TINY_FLAGS, "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    return out_dir, proc


def test_cli_random_demo_on_the_bundled_example(random_run):
    out_dir, proc = random_run
    assert proc.returncode == 0, proc.stderr
    assert outputs.RANDOM_PARAMS_LABEL in proc.stderr and "bundled example" in proc.stderr
    seq_dir = out_dir / NAME
    label, ascii_label = outputs.RANDOM_PARAMS_LABEL, outputs.RANDOM_PARAMS_LABEL_ASCII
    assert (seq_dir / f"{NAME}_unrelaxed_tiny.pdb").read_text().startswith(f"REMARK   1 {ascii_label}")
    cif = (seq_dir / f"{NAME}_unrelaxed_tiny.cif").read_text()
    assert f"_struct.title '{ascii_label}'" in cif
    assert json.loads((seq_dir / f"{NAME}_pae_tiny.json").read_text())[0]["warning"] == label
    for name in ("ranking.json", "timings.json"):
        assert json.loads((seq_dir / name).read_text())["warning"] == label
    if outputs._figure_class() is not None:
        for png in (f"{NAME}_plddt.png", f"{NAME}_pae.png"):
            assert ascii_label.encode() in (seq_dir / png).read_bytes()  # PNG text chunk
    from Bio.PDB import PDBParser

    structure = PDBParser(QUIET=True).get_structure("x", str(seq_dir / f"{NAME}_unrelaxed_tiny.pdb"))
    assert len(list(structure.get_residues())) == len(SEQUENCE)


def _ca_coordinates(pdb_path) -> np.ndarray:
    from Bio.PDB import PDBParser

    structure = PDBParser(QUIET=True).get_structure("x", str(pdb_path))
    return np.asarray([atom.coord for atom in structure.get_atoms() if atom.get_id() == "CA"])


def test_cli_mesh_splits_the_prediction_and_changes_nothing(random_run, tmp_path, capsys, monkeypatch):
    """`--mesh 2x1`: the trunk split over 2 (virtual CPU) devices with DAP gives the one-device prediction."""
    out_dir, proc = random_run
    assert proc.returncode == 0, proc.stderr
    code, err = _run_cli(
        [*RANDOM_TINY_FLAGS, "--mesh", "2x1", "--output-dir", tmp_path],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "DAP over 2 devices" in err
    pdb = f"{NAME}/{NAME}_unrelaxed_tiny.pdb"
    np.testing.assert_allclose(_ca_coordinates(tmp_path / pdb), _ca_coordinates(out_dir / pdb), atol=2e-3)


def test_cli_precision_kernels_and_chunk_flags(tmp_path, capsys, monkeypatch):
    code, err = _run_cli(
        [*RANDOM_TINY_FLAGS, "--precision", "bf16", "--kernels", "xla", "--chunk-size", "8", "--output-dir", tmp_path],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "kernels xla, chunk size 8, bfloat16" in err
    assert len(_ca_coordinates(tmp_path / NAME / f"{NAME}_unrelaxed_tiny.pdb")) == len(SEQUENCE)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mesh", "2x2"], "data axis must be 1"),
        (["--mesh", "16x1"], "needs 16 devices"),
        (["--chunk-size", "big"], "expected 'auto' or a number"),
        (["--kernels", "triton"], "invalid choice"),
    ],
)
def test_cli_bad_run_flags_are_clear_errors(tmp_path, capsys, monkeypatch, flags, message):
    try:
        code, err = _run_cli(
            ["--params", "random", "--models", "tiny", "--output-dir", tmp_path, *flags], capsys, monkeypatch
        )
    except SystemExit as usage_error:  # argparse's own exit for a bad value: usage line + one error line
        code, err = usage_error.code, capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err


def test_cli_refuses_to_overwrite_a_finished_prediction(random_run, capsys, monkeypatch):
    out_dir, proc = random_run
    assert proc.returncode == 0
    before = {p.name: p.read_bytes() for p in (out_dir / NAME).iterdir()}
    code, err = _run_cli(["--params", "random", "--models", "tiny", "--output-dir", out_dir], capsys, monkeypatch)
    assert code == 1 and "already" in err and "--overwrite" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (out_dir / NAME).iterdir()} == before


def test_cli_without_parameters_explains_how_to_get_them(tmp_path):
    env = dict(os.environ)
    env.pop("JAXFOLD_PARAMS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 2
    assert "python -m jaxfold.params download DIR" in proc.stderr and "--params random" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_cli_bad_fasta_is_one_clear_line(tmp_path):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">ok\nACDEF\n>broken\nACD1EF\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "infer.py"),
            str(fasta),
            "--params",
            "random",
            "--msa-mode",
            "single_sequence",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "error: malformed FASTA" in proc.stderr and "'broken'" in proc.stderr and "'1'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "make_args, code, message",
    [
        (
            lambda d, t: [t / "absent.fasta", "--params", "random", "--msa-mode", "single_sequence"],
            1,
            "FASTA file not found",
        ),
        (
            lambda d, t: [t / "noheader.fasta", "--params", "random", "--msa-mode", "single_sequence"],
            1,
            "sequence data before the first header",
        ),
        (
            lambda d, t: [t / "unknown.fasta", "--params", "random", "--msa-mode", "single_sequence"],
            1,
            "illegal residue letter 'J'",
        ),
        (
            lambda d, t: [t / "empty.fasta", "--params", "random", "--msa-mode", "single_sequence"],
            1,
            "no FASTA record found",
        ),
        (
            lambda d, t: [d / "seqs" / f"{NAME}.fasta", "--params", "random", "--msa-dir", t / "no_msas"],
            1,
            "MSA folder not found",
        ),
        (lambda d, t: [d / "seqs" / f"{NAME}.fasta", "--params", "random"], 1, "no alignments"),
        (
            lambda d, t: [
                d / "seqs" / f"{NAME}.fasta",
                "--params",
                t / "nothing_here",
                "--msa-mode",
                "single_sequence",
            ],
            1,
            "parameter file or folder not found",
        ),
        (lambda d, t: ["--params", t / "params_model_1_ptm.npz", "--compilation-cache", ""], 1, "not a readable .npz"),
        (lambda d, t: ["--params", t, "--models", "model_3"], 1, "no parameter file params_model_3.npz"),
        (lambda d, t: ["--params", "random", "--models", "model_9"], 1, "unknown preset 'model_9'"),
        (lambda d, t: ["--params", "random", "--msa-mode", "search"], 1, "needs at least one --database"),
        (lambda d, t: ["--params", "random", "--template-hits", t / "x.hhr"], 1, "needs --template-mmcif-dir"),
    ],
)
def test_cli_input_errors(data, tmp_path, capsys, monkeypatch, make_args, code, message):
    (tmp_path / "noheader.fasta").write_text("ACDEF\n")
    (tmp_path / "empty.fasta").write_text("")
    (tmp_path / "unknown.fasta").write_text(">x\nACDJEF\n")
    (tmp_path / "params_model_1_ptm.npz").write_bytes(b"this is not a zip archive")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("keep")
    got, err = _run_cli(make_args(data, tmp_path) + ["--output-dir", out], capsys, monkeypatch)
    assert got == code, err
    assert message in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_cli_alignment_of_another_protein_is_a_clear_error(data, tmp_path, capsys, monkeypatch):
    """A per-sequence failure: its error line names the file and the mismatch, then the run's summary."""
    other = tmp_path / "other_msas" / NAME
    other.mkdir(parents=True)  # an alignment whose query is another protein (ubiquitin 1-37)
    (other / "bfd_uniclust_hits.a3m").write_text(">q\nMQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIP\n")
    out = tmp_path / "out"
    got, err = _run_cli(
        [
            data / "seqs" / f"{NAME}.fasta",
            "--params",
            "random",
            "--models",
            "tiny",
            "--msa-dir",
            tmp_path / "other_msas",
            "--output-dir",
            out,
        ],
        capsys,
        monkeypatch,
    )
    assert got == 1, err
    assert "bfd_uniclust_hits.a3m" in err and "is not the query sequence" in err and "Traceback" not in err
    assert not list(out.glob("**/*.pdb")) and not list(out.glob("**/ranking.json"))


def test_cli_unwritable_output_dir_is_a_clear_error(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")  # root ignores permission bits, so block with a file
    got, err = _run_cli(
        [
            data / "seqs" / f"{NAME}.fasta",
            "--params",
            "random",
            "--models",
            "tiny",
            "--msa-mode",
            "single_sequence",
            "--output-dir",
            blocker / "sub",
        ],
        capsys,
        monkeypatch,
    )
    assert got == 1, err
    assert "Not a directory" in err and err.count("error:") == 1 and "Traceback" not in err
    assert blocker.read_text() == "a file, not a folder"


def test_cli_ptm_mismatch_and_shrunk_depth_hint(params_file, data, tmp_path, capsys, monkeypatch):
    common = [
        data / "seqs" / f"{NAME}.fasta",
        "--msa-dir",
        data / "msas",
        "--params",
        params_file,
        "--output-dir",
        tmp_path,
        "--compilation-cache",
        "",
        "--no-progress",
    ]
    code, err = _run_cli(common + ["--models", "model_1"] + SHRINK_FLAGS, capsys, monkeypatch)
    assert code == 1 and "is a pTM model" in err and "model_N_ptm" in err, err
    assert err.count("error:") == 1
    code, err = _run_cli(common, capsys, monkeypatch)  # full-depth preset, shrunk file
    assert code == 1 and "wrong shape" in err
    assert "--evoformer-num-block 2 --extra-msa-stack-num-block 1" in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_params_resolution(tmp_path, params_file):
    assert model_params.default_models("random") == ["model_1_ptm"]
    assert model_params.default_models(str(params_file)) == ["model_1_ptm"]
    for name in ("params_model_1.npz", "params_model_2.npz", "params_model_1_ptm.npz"):
        (tmp_path / name).write_bytes(b"")
    assert model_params.default_models(str(tmp_path)) == ["model_1_ptm"]
    (tmp_path / "params_model_1_ptm.npz").unlink()
    assert model_params.default_models(str(tmp_path)) == ["model_1", "model_2"]
    assert model_params.resolve_params(str(tmp_path), "model_2") == tmp_path / "params_model_2.npz"
    assert model_params.resolve_params("random", "model_1_ptm") is None
    with pytest.raises(inference.InferenceError, match="is for model_1_ptm, not model_2_ptm"):
        model_params.resolve_params(str(params_file), "model_2_ptm")
    with pytest.raises(inference.InferenceError, match="python -m jaxfold.params download"):
        model_params.resolve_params(None, "model_1_ptm")


# ---------------------------------------------------------------------------------------------
# --relax and --bucket wiring.
# ---------------------------------------------------------------------------------------------


def test_relax_models_relaxes_the_best_model_and_keeps_plddt(tmp_path, shared_dir, monkeypatch):
    """`--relax best` glue: a deposited structure (1L2Y, Trp-cage) standing in for a prediction, two atoms
    pushed into a clash; only the best-ranked model is relaxed, its files keep the pLDDT B-factors, the
    clash is gone and the stats land in what ranking.json receives (`extra`) and the timings."""
    pytest.importorskip("openmm")
    from Bio.PDB import MMCIFParser, PDBParser

    from jaxfold.common import protein

    prot = protein.from_mmcif_string((shared_dir / "data/structures/mmcif/1l2y.cif").read_text())
    n = len(prot.aatype)
    positions = np.array(prot.atom_positions, np.float32)
    positions[5, 4] = positions[6, 1] + 0.3  # CB of residue 6 onto CA of residue 7: a clash
    plddt = np.linspace(40.0, 95.0, n)

    def prediction(rank_score):
        return {
            "structure_module/final_atom_positions": positions,
            "structure_module/final_atom_mask": np.asarray(prot.atom_mask, np.float32),
            "confidence/plddt": plddt + rank_score,
            "confidence/ranking_confidence": np.asarray(rank_score),
            "features/aatype": prot.aatype,
            "features/residue_index": np.arange(n),
            "features/seq_mask": np.ones(n, np.float32),
        }

    results = {"model_a": prediction(1.0), "model_b": prediction(2.0)}
    assert outputs.ranking_summary(results)["order"] == ["model_b", "model_a"]
    # One OpenMM thread: with several, the force sums' order varies from run to run, and so can the minimiser's
    # path (once in a loaded CI run, two residues still violated after the three rounds).
    import jaxfold.relax

    monkeypatch.setattr(jaxfold.relax, "relax_structure", functools.partial(jaxfold.relax.relax_structure, threads=1))
    # Through the runners' step (inference.relax_ranked -> outputs.relax_models), as infer.py takes it.
    report, extra, timings = inference.SequenceReport(name="trp", output_dir=tmp_path), {}, {}
    inference.relax_ranked(report, extra, timings, results, "none", "cpu", False, NO_PROGRESS, print)
    assert not report.files and not extra and not timings and not list(tmp_path.iterdir())  # --relax none
    inference.relax_ranked(report, extra, timings, results, "best", "cpu", False, NO_PROGRESS, print)
    assert sorted(p.name for p in report.files) == ["trp_relaxed_model_b.cif", "trp_relaxed_model_b.pdb"]
    stats = extra["relax"]
    assert set(stats) == {"model_b"} and set(timings) == {"relax_model_b"} and timings["relax_model_b"] > 0
    assert stats["model_b"]["clashing_atoms_before"] > 0 and stats["model_b"]["violating_residues_after"] == 0
    assert stats["model_b"]["rmsd"] < 1.0
    relaxed = PDBParser(QUIET=True).get_structure("r", str(tmp_path / "trp_relaxed_model_b.pdb"))
    b_factors = [res["CA"].get_bfactor() for res in relaxed.get_residues()]
    np.testing.assert_allclose(b_factors, plddt + 2.0, atol=0.01)
    assert (
        len(list(MMCIFParser(QUIET=True).get_structure("c", str(tmp_path / "trp_relaxed_model_b.cif")).get_residues()))
        == n
    )


def test_bucketed_prediction_equals_exact_shapes(data):
    """`--bucket auto`: 1psm_A (38 residues) padded to 64 and its MSA rows to a power of two gives the
    exact-shape prediction to round-off, cut back to 38 residues."""
    config = inference.build_config("tiny", num_recycle=1)
    params = model_params.init_random_params(config, seed=0)
    record = parsers.read_fasta(REPO / "examples" / "1psm_A.fasta")[0]
    raw = build_raw_features(record, msa_mode="precomputed", msa_dir=str(REPO / "examples" / "msas"))
    from jaxfold.data.feature_processing import process_features

    features = process_features(raw, config, seed=0)
    exact = inference.predict(features, config, params, outputs="lean", bucket="none")
    padded = inference.predict(features, config, params, outputs="lean", bucket="auto")
    assert padded["structure_module/final_atom_positions"].shape[0] == len(SEQUENCE)
    for key in (
        "structure_module/final_atom_positions",
        "confidence/plddt",
        "confidence/predicted_aligned_error",
        "confidence/ptm",
        "confidence/ranking_confidence",
    ):
        np.testing.assert_allclose(padded[key], exact[key], rtol=1e-4, atol=2e-3, err_msg=key)


@pytest.mark.parametrize("preallocate", [None, "false"])
def test_an_out_of_memory_failure_says_what_would_help(monkeypatch, preallocate):
    from jaxfold.data.parsers import FastaRecord

    if preallocate is None:
        monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    else:
        monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", preallocate)
    record = FastaRecord(name="long", description="long", sequence="A" * 8000)
    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 36.95GiB")
    reason = inference.failure_reason(error, record)
    assert reason.startswith("out of device memory (8000 residues)") and "--precision bf16" in reason
    assert ("XLA_PYTHON_CLIENT_PREALLOCATE=false is set" in reason) == (preallocate == "false")
    assert inference.failure_reason(ValueError("bad"), record).startswith("unexpected ValueError: bad")
