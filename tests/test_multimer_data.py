"""Multimer features: pairing, merging and per-chain features against DeepMind's pipeline.

References: ``shared/reference_multimer/features_chains.npz`` (DeepMind's per-chain features
after ``convert_monomer_features`` + ``add_assembly_features``, from ``inputs/{A,B}``) and
``features.npz`` (after ``pair_and_merge`` + ``pad_msa``); real alignments from
``shared/data/msas`` for a homodimer (3u8v) and a two-entity complex.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxfold.common import residue_constants
from jaxfold.data import msa_pairing, multimer_merge, multimer_pipeline, parsers, pipeline
from jaxfold.data.complex_fasta import chain_ids, parse_complex_fasta, read_complex_fasta
from jaxfold.data.parsers import FastaRecord, ParseError

TEMPLATE_KEYS = ("template_aatype", "template_all_atom_mask", "template_all_atom_positions")


def _reference_chains(shared_dir) -> dict[str, dict[str, np.ndarray]]:
    data = np.load(shared_dir / "reference_multimer" / "features_chains.npz")
    chains: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        chain, name = key.split("/")
        chains.setdefault(chain, {})[name] = data[key]
    return chains


def _as_text(array: np.ndarray) -> np.ndarray:
    """bytes object arrays (the pipeline's strings) -> unicode, as saved in the npz."""
    array = np.asarray(array)
    if array.dtype != object:
        return array
    decode = np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else str(x), otypes=[str])
    return decode(array) if array.ndim else np.asarray(decode(array.reshape(1))[0])


def _assert_same(ours: dict, theirs, keys, what: str) -> None:
    for key in keys:
        a, b = _as_text(ours[key]), theirs[key]
        assert a.shape == b.shape, f"{what} {key}: shape {a.shape} != {b.shape}"
        if b.dtype.kind != "U":
            assert a.dtype == b.dtype, f"{what} {key}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=f"{what} {key}")


def _sequence(shared_dir, target: str) -> str:
    return parsers.read_fasta(shared_dir / "data" / "seqs" / f"{target}.fasta")[0].sequence


# ---------------------------------------------------------------------------------------
# Pairing + merging from DeepMind's per-chain features.
# ---------------------------------------------------------------------------------------


def test_pair_and_merge_reproduces_reference_batch(shared_dir):
    chains = _reference_chains(shared_dir)
    before = {c: {k: v.copy() for k, v in f.items()} for c, f in chains.items()}
    merged = multimer_merge.pair_and_merge(chains)
    batch = multimer_merge.pad_msa(merged)
    reference = np.load(shared_dir / "reference_multimer" / "features.npz")
    assert set(batch) == set(reference.files)
    _assert_same(batch, reference, reference.files, "features.npz")
    # Manifest: 13 paired rows (query included), 68 rows with residues, padded to 512.
    assert int(merged["num_alignments"]) == 68 and merged["msa"].shape == (68, 49)
    assert int(np.sum(np.any(batch["msa_mask"] > 0, axis=1))) == 68
    # The inputs are not modified.
    for c in chains:
        for k in before[c]:
            np.testing.assert_array_equal(chains[c][k], before[c][k])


def test_paired_rows_share_species_and_rank_by_identity(shared_dir):
    chains = list(_reference_chains(shared_dir).values())
    paired = msa_pairing.create_paired_features(chains)
    num_rows = {int(c["num_alignments_all_seq"]) for c in paired}
    assert num_rows == {13}
    species = [_as_text(c["msa_species_identifiers_all_seq"]) for c in paired]
    assert species[0][0] == species[1][0] == ""  # the query rows
    np.testing.assert_array_equal(paired[0]["msa_all_seq"][0], chains[0]["msa_all_seq"][0])
    for row in range(1, 13):
        assert species[0][row] == species[1][row] != "", row
    # Every species of both chains is paired min(count_A, count_B) times, and each chain
    # gives its rows of that species most similar to its query first.
    original = [_as_text(c["msa_species_identifiers_all_seq"]) for c in chains]
    common = sorted((set(original[0]) & set(original[1])) - {""})
    for name in common:
        take = min(int(np.sum(o == name)) for o in original)
        assert int(np.sum(species[0] == name)) == take, name
        for chain, orig, got in zip(chains, original, paired):
            msa = chain["msa_all_seq"]
            identity = np.mean(msa == msa[0], axis=1)
            best = np.sort(identity[orig == name])[::-1][:take]
            chosen = got["msa_all_seq"][_as_text(got["msa_species_identifiers_all_seq"]) == name]
            np.testing.assert_allclose(np.sort(np.mean(chosen == msa[0], axis=1))[::-1], best)


def test_species_with_more_than_600_rows_is_not_paired(shared_dir):
    chains = list(_reference_chains(shared_dir).values())
    first = dict(chains[0])
    species = _as_text(first["msa_species_identifiers_all_seq"])
    name = sorted((set(species) & set(_as_text(chains[1]["msa_species_identifiers_all_seq"]))) - {""})[0]
    rows = np.flatnonzero(species == name)
    extra = np.repeat(rows[:1], 601)
    index = np.concatenate([np.arange(len(species)), extra])
    for key in ("msa_all_seq", "deletion_matrix_int_all_seq", "msa_species_identifiers_all_seq"):
        first[key] = first[key][index]
    paired = msa_pairing.create_paired_features([first, chains[1]])
    kept = _as_text(paired[0]["msa_species_identifiers_all_seq"])
    assert name not in set(kept)
    assert len(kept) == 13 - int(
        min(np.sum(species == name), np.sum(_as_text(chains[1]["msa_species_identifiers_all_seq"]) == name))
    )


# ---------------------------------------------------------------------------------------
# Per-chain features from the raw input files.
# ---------------------------------------------------------------------------------------


def test_chain_features_from_input_files_match_reference(shared_dir):
    inputs = shared_dir / "reference_multimer" / "inputs"
    reference = _reference_chains(shared_dir)
    converted = {}
    for chain_id, key in (("A", "A_1"), ("B", "B_1")):
        sequence = str(reference[key]["sequence"])
        raw = multimer_pipeline.chain_features(sequence, chain_id, inputs / chain_id, pair_msas=True)
        converted[chain_id] = multimer_pipeline.convert_monomer_features(raw, chain_id)
    assembly = multimer_pipeline.add_assembly_features(converted)
    assert list(assembly) == ["A_1", "B_1"]
    for key in ("A_1", "B_1"):
        assert set(assembly[key]) == set(reference[key]), key
        # Chain A's reference template is its own (snapped) structure, not from a hit
        # file; chain B has DeepMind's empty template, which ours must equal.
        keys = [k for k in reference[key] if key == "B_1" or not k.startswith("template_")]
        _assert_same(assembly[key], reference[key], keys, key)

    # Whole pipeline from files (A's template from the reference): features.npz exactly.
    for name in reference["A_1"]:
        if name.startswith("template_"):
            assembly["A_1"][name] = reference["A_1"][name]
    batch = multimer_merge.pad_msa(multimer_merge.pair_and_merge(assembly))
    expected = np.load(shared_dir / "reference_multimer" / "features.npz")
    _assert_same(batch, expected, expected.files, "features.npz")


def test_complex_features_from_chain_folders(shared_dir):
    inputs = shared_dir / "reference_multimer" / "inputs"
    reference = _reference_chains(shared_dir)
    sequences = [str(reference["A_1"]["sequence"]), str(reference["B_1"]["sequence"])]
    info: dict = {}
    batch = multimer_pipeline.complex_features(sequences, [inputs / "A", inputs / "B"], info=info)
    expected = np.load(shared_dir / "reference_multimer" / "features.npz")
    assert set(batch) == set(expected.files)
    _assert_same(batch, expected, [k for k in expected.files if k not in TEMPLATE_KEYS], "complex_features")
    # No mmCIF folder: AlphaFold-Multimer's empty templates only.
    assert batch["template_aatype"].shape == (4, 49)
    assert not batch["template_all_atom_mask"].any()
    assert [(c["chain_id"], c["asym_id"], c["start"], c["end"]) for c in info["chains"]] == [
        ("A", 1, 0, 36),
        ("B", 2, 36, 49),
    ]
    assert info["per_sequence"]["A"]["uniprot_rows"] == 24


def test_complex_features_regroups_chains_by_entity(shared_dir):
    """Input order A, B, A': the batch holds entity 1 twice, then entity 2 (as DeepMind's
    add_assembly_features orders them); info says which input chain went where."""
    inputs = shared_dir / "reference_multimer" / "inputs"
    reference = _reference_chains(shared_dir)
    a, b = str(reference["A_1"]["sequence"]), str(reference["B_1"]["sequence"])
    info: dict = {}
    batch = multimer_pipeline.complex_features([a, b, a], [inputs / "A", inputs / "B", None], info=info)
    assert [(c["chain_id"], c["input_index"], c["entity_id"], c["sym_id"], c["asym_id"]) for c in info["chains"]] == [
        ("A", 0, 1, 1, 1),
        ("C", 2, 1, 2, 2),
        ("B", 1, 2, 1, 3),
    ]
    n = 2 * len(a) + len(b)
    np.testing.assert_array_equal(batch["asym_id"], np.repeat([1.0, 2.0, 3.0], [36, 36, 13]))
    np.testing.assert_array_equal(batch["entity_id"], np.repeat([1.0, 1.0, 2.0], [36, 36, 13]))
    np.testing.assert_array_equal(batch["sym_id"], np.repeat([1.0, 2.0, 1.0], [36, 36, 13]))
    assert batch["aatype"].shape == (n,) and int(batch["assembly_num_chains"]) == 3
    order = residue_constants.restype_order_with_x
    np.testing.assert_array_equal(batch["aatype"], [order[r] for r in a + a + b])
    # The two copies of entity 1 share their paired and unpaired rows (dense homomer MSA).
    rows = batch["msa_mask"].any(axis=1)
    np.testing.assert_array_equal(batch["msa"][rows][:, :36], batch["msa"][rows][:, 36:72])


# ---------------------------------------------------------------------------------------
# Real alignments: a homodimer and a two-entity complex.
# ---------------------------------------------------------------------------------------


def test_homodimer_3u8v_from_precomputed_alignments(shared_dir, tmp_path):
    source = shared_dir / "data" / "msas" / "3u8v_A"
    # A homomer is never paired: its folder needs no uniprot_hits.sto.
    folder = tmp_path / "3u8v_A"
    folder.mkdir()
    for name in ("uniref90_hits.sto", "bfd_uniclust_hits.a3m", "mgnify_hits.sto"):
        shutil.copy(source / name, folder / name)
    sequence = _sequence(shared_dir, "3u8v_A")
    # 3u8v is a homodimer: both chains' SEQRES are the MSA query.
    seqres = {r.name: r.sequence for r in parsers.read_fasta(shared_dir / "data" / "seqs" / "structures_seqres.fasta")}
    assert seqres["3u8v_A"] == seqres["3u8v_B"] == sequence
    info: dict = {}
    batch = multimer_pipeline.complex_features([sequence, sequence], [folder, folder], info=info)
    n = len(sequence)
    monomer = pipeline.build_raw_features(FastaRecord("chain_A", "chain_A", sequence), "precomputed", msa_dir=folder)
    depth = min(monomer["msa"].shape[0], multimer_merge.MSA_CROP_SIZE)
    to_ours = np.asarray(residue_constants.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE)
    msa = to_ours[monomer["msa"][:depth]]
    rows = max(depth, multimer_merge.MIN_MSA_ROWS)
    assert batch["msa"].shape == (rows, 2 * n)
    np.testing.assert_array_equal(batch["msa"][:depth], np.concatenate([msa, msa], axis=1))
    np.testing.assert_array_equal(
        batch["deletion_matrix"][:depth, n:], monomer["deletion_matrix_int"][:depth].astype(np.float32)
    )
    np.testing.assert_array_equal(batch["asym_id"], np.repeat([1.0, 2.0], n))
    np.testing.assert_array_equal(batch["sym_id"], np.repeat([1.0, 2.0], n))
    np.testing.assert_array_equal(batch["entity_id"], np.ones(2 * n))
    np.testing.assert_array_equal(batch["residue_index"], np.tile(np.arange(n), 2))
    np.testing.assert_array_equal(batch["cluster_bias_mask"], np.eye(1, rows, 0).ravel())
    np.testing.assert_array_equal(batch["msa_mask"][:depth], 1)
    np.testing.assert_array_equal(batch["msa_mask"][depth:], 0)
    np.testing.assert_array_equal(batch["bert_mask"][:depth], 1)
    assert int(batch["num_alignments"]) == depth and int(batch["seq_length"]) == 2 * n
    np.testing.assert_allclose(
        batch["deletion_mean"][:n], np.mean(monomer["deletion_matrix_int"][:depth], axis=0), rtol=1e-6
    )
    assert "uniprot_rows" not in info["per_sequence"]["A"]
    assert [c["chain_id"] for c in info["chains"]] == ["A", "B"]


def test_heteromer_real_uniprot_alignments(shared_dir):
    """4zey_A, 3zee_A and 1psm_A: not a real complex, but three real UniProt alignments
    (hundreds of species shared by the first two, one by the last two) to pair."""
    msas = shared_dir / "data" / "msas"
    targets = ("4zey_A", "3zee_A", "1psm_A")
    sequences = [_sequence(shared_dir, t) for t in targets]
    chains = {}
    for chain_id, sequence, target in zip("ABC", sequences, targets):
        raw = multimer_pipeline.chain_features(sequence, chain_id, msas / target, pair_msas=True)
        chains[chain_id] = multimer_pipeline.convert_monomer_features(raw, chain_id)
    assembly = multimer_pipeline.add_assembly_features(chains)
    paired = msa_pairing.create_paired_features([dict(c) for c in assembly.values()])
    species = np.stack([_as_text(c["msa_species_identifiers_all_seq"]) for c in paired], axis=1)
    num_paired = species.shape[0]
    assert num_paired > 300
    assert (species[0] == "").all()
    num_present = (species != "").sum(axis=1)
    for row in range(1, num_paired):
        present = set(species[row][species[row] != ""])
        assert num_present[row] >= 2 and len(present) == 1, (row, species[row])
    # Rows paired across more chains come first (none across all three here: 4zey's only
    # HIRRU rows repeat earlier rows and are dropped); a chain without the species
    # contributes its padding row (all gaps).
    assert (np.diff(num_present[1:]) <= 0).all()
    assert ((species[:, 1] == "HIRRU") & (species[:, 2] == "HIRRU")).sum() == 1
    gap = msa_pairing.MSA_GAP_IDX
    absent = species[1:] == ""
    assert absent[:, 0].any() and absent[:, 2].any()
    for chain_index, chain in enumerate(paired):
        assert (chain["msa_all_seq"][1:][absent[:, chain_index]] == gap).all()

    # Cropping (AlphaFold's 2048 rows per chain, here 64 to bite): paired rows at most
    # half, and the paired rows holding residues of a chain take room from its unpaired.
    deduped = msa_pairing.deduplicate_unpaired_sequences(
        [{**c, "deletion_matrix": c["deletion_matrix_int"].astype(np.float32)} for c in paired]
    )
    cropped = multimer_merge.crop_chains(
        [dict(c) for c in deduped], msa_crop_size=64, pair_msa_sequences=True, max_templates=4
    )
    for before, after in zip(deduped, cropped):
        assert after["msa_all_seq"].shape[0] == int(after["num_alignments_all_seq"]) == 32
        with_residues = int(np.any(after["msa_all_seq"] != gap, axis=1).sum())
        expected = min(before["msa"].shape[0], 64 - with_residues)
        assert after["msa"].shape[0] == after["deletion_matrix"].shape[0] == expected
        np.testing.assert_array_equal(after["msa"], before["msa"][:expected])
        assert int(after["num_alignments"]) == expected and int(after["num_templates"]) == 1

    batch = multimer_merge.pad_msa(multimer_merge.pair_and_merge(assembly))
    lengths = [len(s) for s in sequences]
    starts = np.cumsum([0] + lengths)
    depth = int(batch["num_alignments"])
    assert batch["msa"].shape == (max(depth, 512), sum(lengths))
    np.testing.assert_array_equal(batch["asym_id"], np.repeat([1.0, 2.0, 3.0], lengths))
    np.testing.assert_array_equal(batch["entity_id"], np.repeat([1.0, 2.0, 3.0], lengths))
    # Under the paired rows, the unpaired blocks are block-diagonal: gaps off the diagonal,
    # and bert_mask 0 there.
    gap_ours = residue_constants.restypes_with_x_and_gap.index("-")
    unpaired = batch["msa"][num_paired:depth]
    bert = batch["bert_mask"][num_paired:depth]
    for k in range(3):
        own = bert[:, starts[k]] > 0
        assert own.any()
        inside = slice(starts[k], starts[k + 1])
        assert (bert[own][:, inside] == 1).all()
        outside = np.ones(sum(lengths), bool)
        outside[inside] = False
        assert (unpaired[own][:, outside] == gap_ours).all() and bert[own][:, outside].sum() == 0
        # Unpaired rows never repeat a paired row of the same chain.
        paired_rows = {tuple(r) for r in batch["msa"][:num_paired, inside].tolist()}
        assert not paired_rows & {tuple(r) for r in unpaired[own][:, inside].tolist()}
    np.testing.assert_array_equal(batch["bert_mask"][:num_paired], 1)
    assert batch["cluster_bias_mask"][0] == 1 and batch["cluster_bias_mask"][1:].sum() == 0


def _uniprot_fasta(shared_dir, targets, path: Path) -> Path:
    """A small UniProt database: the ungapped hit rows (real names ``tr|ACC|ACC_SPECIES/s-e``)
    of the targets' uniprot_hits.sto, each name once, without the query rows."""
    names, lines = set(), []
    for target in targets:
        sto = (shared_dir / "data" / "msas" / target / "uniprot_hits.sto").read_text()
        rows = [line.split() for line in sto.splitlines() if line.strip() and not line.startswith(("#", "//"))]
        query = rows[0][0]
        for name, aligned in rows:
            if name != query and name not in names:
                names.add(name)
                residues = aligned.replace("-", "").replace(".", "").upper()
                lines.append(f">{name}\n{residues}\n")
    path.write_text("".join(lines))
    return path


def test_search_mode_pairs_and_writes_folders_for_a_rerun(shared_dir, tmp_path):
    pytest.importorskip("pyhmmer")
    targets = ("4zey_A", "3zee_A")
    sequences = [_sequence(shared_dir, t) for t in targets]
    uniprot = _uniprot_fasta(shared_dir, targets, tmp_path / "uniprot.fasta")
    databases = {"uniref90": shared_dir / "data" / "seqdb" / "uniref90_hits_union.fasta"}
    with pytest.raises(ValueError, match="a heteromer searched for MSAs needs a UniProt database"):
        multimer_pipeline.complex_features(sequences, msa_mode="search", databases=databases)
    info: dict = {}
    with pytest.warns(RuntimeWarning, match="hhblits") if shutil.which("hhblits") is None else contextlib.nullcontext():
        batch = multimer_pipeline.complex_features(
            sequences,
            msa_mode="search",
            databases=databases,
            uniprot_database=uniprot,
            output_dir=tmp_path / "msas",
            info=info,
        )
    assert sorted(p.name for p in (tmp_path / "msas" / "A").iterdir()) == ["uniprot_hits.sto", "uniref90_hits.a3m"]
    assert info["per_sequence"]["B"]["uniprot_rows"] > 100
    # The searched rows were paired: more than the query row is shared by both chains.
    num_paired = int(np.sum(batch["bert_mask"][:, 0] * batch["bert_mask"][:, -1]))
    assert num_paired > 100
    # Reading the written folders back gives the same batch.
    again = multimer_pipeline.complex_features(sequences, [tmp_path / "msas" / "A", tmp_path / "msas" / "B"])
    assert set(again) == set(batch)
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key], err_msg=key)


def test_find_chain_msa_dirs(tmp_path):
    (tmp_path / "cplx" / "msas" / "A").mkdir(parents=True)
    (tmp_path / "cplx_B").mkdir()
    found = multimer_pipeline.find_chain_msa_dirs(tmp_path, "cplx", ["A", "B", "C"], ["MKV", "GGG", "MKV"])
    assert found == [tmp_path / "cplx" / "msas" / "A", tmp_path / "cplx_B", None]
    with pytest.raises(FileNotFoundError, match=r"no alignment folder for chain C; tried"):
        multimer_pipeline.find_chain_msa_dirs(tmp_path, "cplx", ["A", "B", "C"], ["MKV", "GGG", "WWW"])


# ---------------------------------------------------------------------------------------
# Templates (AlphaFold-Multimer's featuriser rules).
# ---------------------------------------------------------------------------------------


def test_multimer_templates_dedup_and_empty_default(shared_dir):
    from jaxfold.data import templates  # noqa: PLC0415

    mmcif = shared_dir / "data" / "structures" / "mmcif"
    sequence = _sequence(shared_dir, "2crb_A")
    hits = pipeline.read_template_hits(shared_dir / "data" / "msas" / "2crb_A" / "hmm_output.sto", sequence)
    hit = next(h for h in hits if h.name.startswith("4zey_A"))
    info: dict = {}
    ours = multimer_pipeline.multimer_templates_from_hits(sequence, [hit, hit], mmcif, "2030-01-01", info=info)
    monomer = templates.TemplateFeaturizer(mmcif, "2030-01-01").get_templates(sequence, [hit, hit]).features
    # The monomer featuriser keeps both copies; the multimer one keeps the first only.
    assert monomer["template_aatype"].shape[0] == 2
    assert ours["template_aatype"].shape[0] == 1 and info["templates"] == ["4zey_A"]
    for key, value in monomer.items():
        np.testing.assert_array_equal(ours[key], value[:1], err_msg=key)

    # 3u8v's only mmCIF hit is itself (prefiltered): one all-zero template, as DeepMind's.
    sequence = _sequence(shared_dir, "3u8v_A")
    empty = multimer_pipeline.multimer_template_features(
        sequence, shared_dir / "data" / "msas" / "3u8v_A" / "hmm_output.sto", mmcif, "2030-01-01"
    )
    assert empty["template_aatype"].shape == (1, 93, 22) and not empty["template_aatype"].any()
    # Converted to AlphaFold's residue order: the template's own sequence, '-' -> gap (21).
    converted = multimer_pipeline.convert_monomer_features({"template_aatype": ours["template_aatype"]}, "A")[
        "template_aatype"
    ]
    letters = _as_text(ours["template_sequence"])[0]
    order = {r: i for i, r in enumerate(residue_constants.restypes_with_x_and_gap)}
    assert converted.dtype == np.int64
    np.testing.assert_array_equal(converted[0], [order[r] for r in letters])


# ---------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------


def _copy_inputs(shared_dir, tmp_path) -> tuple[Path, Path, list[str]]:
    inputs = shared_dir / "reference_multimer" / "inputs"
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(inputs / "A", a)
    shutil.copytree(inputs / "B", b)
    for folder in (a, b):
        for f in folder.iterdir():
            f.chmod(0o644)
    reference = _reference_chains(shared_dir)
    return a, b, [str(reference["A_1"]["sequence"]), str(reference["B_1"]["sequence"])]


def test_missing_or_bad_uniprot_alignment_is_named(shared_dir, tmp_path):
    a, b, sequences = _copy_inputs(shared_dir, tmp_path)
    (b / "uniprot_hits.sto").unlink()
    with pytest.raises(FileNotFoundError, match=r"B/uniprot_hits\.sto not found"):
        multimer_pipeline.complex_features(sequences, [a, b])
    # Allowed to go unpaired: chain B contributes only its query to the paired rows.
    batch = multimer_pipeline.complex_features(sequences, [a, b], require_uniprot=False)
    assert batch["msa"].shape[1] == 49

    (b / "uniprot_hits.sto").write_text("# STOCKHOLM 1.0\nchain_B ETFSDLWKLLPEN extra\n//\n")
    with pytest.raises(ParseError, match=r"B/uniprot_hits\.sto, line 2"):
        multimer_pipeline.complex_features(sequences, [a, b])
    shutil.copy(a / "uniprot_hits.sto", b / "uniprot_hits.sto")
    with pytest.raises(ValueError, match=r"B/uniprot_hits\.sto: its first row"):
        multimer_pipeline.complex_features(sequences, [a, b])


def test_bad_complex_inputs(shared_dir, tmp_path):
    a, b, sequences = _copy_inputs(shared_dir, tmp_path)
    with pytest.raises(ValueError, match="2 sequences but 1 alignment folders"):
        multimer_pipeline.complex_features(sequences, [a])
    with pytest.raises(ValueError, match="chain 2 has an empty sequence"):
        multimer_pipeline.complex_features([sequences[0], ""], [a, b])
    with pytest.raises(FileNotFoundError, match="chain B: alignment folder not found"):
        multimer_pipeline.complex_features(sequences, [a, tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="chain B is the first copy"):
        multimer_pipeline.complex_features(sequences, [a, None])


# ---------------------------------------------------------------------------------------
# FASTA convention for complexes.
# ---------------------------------------------------------------------------------------


def test_complex_fasta_chains(tmp_path):
    text = (
        ">mdm2_p53 MDM2 with p53\nKEVLFYLGQYIMTKRLYDEKQQHIVYCSND\nLLGDLF:\n"
        "etfsdlwkllpen*\n>dimer\nSGHTAH:SGHTAH\n>single\nMKV\n"
    )
    path = tmp_path / "complexes.fasta"
    path.write_text(text)
    records = read_complex_fasta(path)
    assert [r.name for r in records] == ["mdm2_p53", "dimer", "single"]
    assert records[0].description == "mdm2_p53 MDM2 with p53"
    assert records[0].sequences == ("KEVLFYLGQYIMTKRLYDEKQQHIVYCSNDLLGDLF", "ETFSDLWKLLPEN")
    assert records[0].chain_ids == ["A", "B"] and records[0].num_entities == 2
    assert records[1].num_chains == 2 and records[1].num_entities == 1
    assert records[2].sequences == ("MKV",) and records[2].chain_ids == ["A"]
    assert chain_ids(62)[-3:] == ["7", "8", "9"] and chain_ids(27)[-1] == "a"


@pytest.mark.parametrize(
    "text, message",
    [
        (">x\nAAA::CCC\n", r"line 1, record 'x': chain 2 \(B\) is empty"),
        (">x\n:AAA\n", r"chain 1 \(A\) is empty"),
        (">x\nAAA:\n", r"chain 2 \(B\) is empty"),
        (">x\n", "record has no sequence"),
        (">x\nAAA:CJC\n", r"chain 2 \(B\): illegal residue letter\(s\) 'J'"),
        (">x\nAAA:C1C\n", r"illegal residue letter\(s\) '1'"),
        (">x\n" + ":".join(["G"] * 63) + "\n", "63 chains; at most 62"),
        ("AAA\n", "sequence data before the first header"),
        ("", "no FASTA record found"),
    ],
)
def test_complex_fasta_errors(text, message):
    with pytest.raises(ParseError, match=message):
        parse_complex_fasta(text, source="in.fasta")
