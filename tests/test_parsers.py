"""Parsers on the real AlphaFold / OpenFold / ColabFold / RoseTTAFold files of shared/data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaxfold.data import parsers
from jaxfold.data.parsers import FastaRecord, Msa, ParseError

# README "MSAs and template hits" table: rows including the query (MSAs), PDB hit rows
# (hmm_output.sto) or hits (.hhr).
README_MSA_ROWS = {
    "102m_A": {"non_pairing.a3m": 98, "pairing.a3m": 771},
    "1k1a_A": {"non_pairing.a3m": 3084, "pairing.a3m": 4977},
    "1psm_A": {"bfd_uniclust_hits.a3m": 12, "mgnify_hits.sto": 9, "uniprot_hits.sto": 289, "uniref90_hits.sto": 20},
    "2crb_A": {"bfd_uniclust_hits.a3m": 416, "mgnify_hits.sto": 19, "uniprot_hits.sto": 1082, "uniref90_hits.sto": 449},
    "2q2k_A": {"bfd_uniclust_hits.a3m": 4, "mgnify_hits.sto": 7, "uniprot_hits.sto": 21, "uniref90_hits.sto": 16},
    "3u8v_A": {"bfd_uniclust_hits.a3m": 734, "mgnify_hits.sto": 157, "uniprot_hits.sto": 565, "uniref90_hits.sto": 479},
    "3zee_A": {
        "bfd_uniclust_hits.a3m": 837,
        "mgnify_hits.sto": 12,
        "uniprot_hits.sto": 3822,
        "uniref90_hits.sto": 3206,
    },
    "4i6p_A": {
        "bfd_uniclust_hits.a3m": 865,
        "mgnify_hits.sto": 12,
        "uniprot_hits.sto": 3834,
        "uniref90_hits.sto": 3212,
    },
    "4zey_A": {"bfd_uniclust_hits.a3m": 401, "mgnify_hits.sto": 17, "uniprot_hits.sto": 1092, "uniref90_hits.sto": 457},
    "5kc1_A": {"bfd_uniclust_hits.a3m": 109, "mgnify_hits.sto": 3, "uniprot_hits.sto": 65, "uniref90_hits.sto": 43},
    "5zyh_A": {"non_pairing.a3m": 323, "pairing.a3m": 681},
    "6kwc_1": {"bfd_uniref_hits.a3m": 1428, "mgnify_hits.sto": 1698},
    "7zzx_B": {"non_pairing.a3m": 4761, "pairing.a3m": 3595},
    "T1078": {"t000_.msa0.a3m": 426},
    "openfold_short": {"bfd_uniclust_hits.a3m": 1024, "mgnify_hits.sto": 59, "uniref90_hits.sto": 57},
}
README_HMMSEARCH_ROWS = {
    "1psm_A": 445,
    "2crb_A": 1879,
    "3u8v_A": 1188,
    "3zee_A": 581,
    "4i6p_A": 531,
    "4zey_A": 1432,
    "5kc1_A": 1303,
}
README_HHR_HITS = {
    ("6kwc_1", "hhsearch_output.hhr"): 60,
    ("T1078", "t000_.hhr"): 100,
    ("openfold_short", "pdb70_hits.hhr"): 10,
}

MSA_CASES = [(t, f, n) for t, files in README_MSA_ROWS.items() for f, n in files.items()]


@pytest.fixture(scope="module")
def data_dir(shared_dir) -> Path:
    return shared_dir / "data"


def _query(data_dir: Path, target: str) -> FastaRecord:
    records = parsers.read_fasta(data_dir / "seqs" / f"{target}.fasta")
    assert len(records) == 1
    return records[0]


def _parse(path: Path) -> Msa:
    text = path.read_text()
    if path.suffix == ".sto":
        return parsers.parse_stockholm(text, source=str(path))
    return parsers.parse_a3m(text, source=str(path))


# ---------------------------------------------------------------------------------------
# Real files.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,filename,rows", MSA_CASES, ids=[f"{t}/{f}" for t, f, _ in MSA_CASES])
def test_real_msa_row_counts_and_shapes(data_dir, target, filename, rows):
    msa = _parse(data_dir / "msas" / target / filename)
    query = _query(data_dir, target)
    assert len(msa) == rows
    assert len(msa.descriptions) == len(msa.deletion_matrix) == rows
    assert {len(s) for s in msa.sequences} == {len(query.sequence)}
    assert {len(d) for d in msa.deletion_matrix} == {len(query.sequence)}
    assert msa.sequences[0] == query.sequence  # the query comes first, ungapped
    assert all(v >= 0 for row in msa.deletion_matrix[:50] for v in row)
    assert not any(c.islower() or c == "." for s in msa.sequences[:200] for c in s)


def test_real_a3m_insertions_counted(data_dir):
    path = data_dir / "msas" / "1psm_A" / "bfd_uniclust_hits.a3m"
    msa = parsers.parse_a3m(path.read_text(), str(path))
    raw = path.read_text().splitlines()
    row = raw[raw.index(next(l for l in raw if l.startswith(">tr|A0A151L2U9"))) + 1]
    assert row == "-KAKKASEDAEKVKKASEDaekaakdAENASKEAEEAAQEAVKLK"
    i = next(k for k, d in enumerate(msa.descriptions) if d.startswith("tr|A0A151L2U9"))
    assert msa.sequences[i] == "-KAKKASEDAEKVKKASEDAENASKEAEEAAQEAVKLK"
    assert msa.deletion_matrix[i][19] == 7 and sum(msa.deletion_matrix[i]) == 7
    assert msa.descriptions[i].startswith("tr|A0A151L2U9|A0A151L2U9_PLARE Merozoite")


def _naive_stockholm(text: str):
    """Straightforward per-character statement of the Stockholm semantics, to check the
    vectorised parser: drop columns where the first row has '-', count a row's residues
    in dropped columns into the next kept column."""
    rows = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        name, seq = line.split()
        rows[name] = rows.get(name, "") + seq
    query = next(iter(rows.values()))
    out_seqs, out_dels = [], []
    for seq in rows.values():
        kept, dels, pending = [], [], 0
        for q, r in zip(query, seq):
            if q == "-":
                if r != "-":
                    pending += 1
            else:
                kept.append(r)
                dels.append(pending)
                pending = 0
        out_seqs.append("".join(kept))
        out_dels.append(dels)
    return out_seqs, out_dels, list(rows)


@pytest.mark.parametrize("target", ["2crb_A", "5kc1_A"])
def test_stockholm_drops_query_gap_columns_and_counts_deletions(data_dir, target):
    path = data_dir / "msas" / target / "uniref90_hits.sto"
    text = path.read_text()
    msa = parsers.parse_stockholm(text, str(path))
    seqs, dels, names = _naive_stockholm(text)
    assert msa.sequences == seqs
    assert msa.deletion_matrix == dels
    assert [d.split()[0] for d in msa.descriptions] == names
    assert sum(map(sum, msa.deletion_matrix)) > 0  # the query row has gaps here
    # #=GS ... DE text is kept after the name.
    assert msa.descriptions[0] == "query"
    assert "[subseq from]" in msa.descriptions[1]


def test_stockholm_to_a3m_round_trip(data_dir):
    path = data_dir / "msas" / "2crb_A" / "uniref90_hits.sto"
    text = path.read_text()
    from_sto = parsers.parse_stockholm(text)
    from_a3m = parsers.parse_a3m(parsers.convert_stockholm_to_a3m(text))
    assert from_a3m.sequences == from_sto.sequences
    assert from_a3m.deletion_matrix == from_sto.deletion_matrix
    assert [d.split()[0] for d in from_a3m.descriptions] == [d.split()[0] for d in from_sto.descriptions]
    limited = parsers.parse_a3m(parsers.convert_stockholm_to_a3m(text, max_sequences=7))
    assert limited.sequences == from_sto.sequences[:7]


def test_truncate_stockholm(data_dir):
    path = data_dir / "msas" / "3zee_A" / "uniref90_hits.sto"
    full = parsers.parse_stockholm(path.read_text())
    truncated_text = parsers.truncate_stockholm_msa(path, 100)
    assert truncated_text == parsers.truncate_stockholm_text(path.read_text(), 100)
    truncated = parsers.parse_stockholm(truncated_text)
    assert len(truncated) == 100
    assert truncated.sequences == full.sequences[:100]
    assert truncated.deletion_matrix == full.deletion_matrix[:100]
    assert len(re.findall(r"^#=GS ", truncated_text, flags=re.M)) <= 100
    with pytest.raises(ValueError):
        parsers.truncate_stockholm_text(path.read_text(), 0)


def test_deduplicate_and_remove_empty_columns(data_dir):
    text = (data_dir / "msas" / "2crb_A" / "uniref90_hits.sto").read_text()
    full = parsers.parse_stockholm(text)
    dedup = parsers.parse_stockholm(parsers.deduplicate_stockholm_msa(text))
    assert dedup.sequences == list(dict.fromkeys(full.sequences))
    assert len(dedup) < len(full)
    few = parsers.truncate_stockholm_text(text, 5)  # few rows -> all-gap columns
    cleaned_text = parsers.remove_empty_columns_from_stockholm_msa(few)
    rows, _, _ = parsers._read_stockholm(cleaned_text, "x")
    width = len(next(iter(rows.values())))
    assert all(any(r[c] != "-" for r in rows.values()) for c in range(width))
    assert width < len(parsers._read_stockholm(few, "x")[0]["query"])
    assert re.search(r"^#=GC RF +x+$", cleaned_text, flags=re.M)
    cleaned = parsers.parse_stockholm(cleaned_text)
    assert cleaned.sequences == full.sequences[:5]  # only query-gap columns were empty


def test_hhr_real_files(data_dir):
    for (target, filename), count in README_HHR_HITS.items():
        path = data_dir / "msas" / target / filename
        hits = parsers.parse_hhr(path.read_text(), str(path))
        assert len(hits) == count
        assert [h.index for h in hits] == list(range(1, count + 1))
        for hit in hits[:30]:
            assert len(hit.query) == len(hit.hit_sequence) == len(hit.indices_query) == len(hit.indices_hit)
            for seq, idx in ((hit.query, hit.indices_query), (hit.hit_sequence, hit.indices_hit)):
                assert [i for s, i in zip(seq, idx) if s == "-"] == [-1] * seq.count("-")
                positions = [i for i in idx if i >= 0]
                assert positions == list(range(positions[0], positions[0] + len(positions)))
    hits = parsers.parse_hhr((data_dir / "msas/T1078/t000_.hhr").read_text())
    first = hits[0]
    assert first.name == "3v0r_A"
    assert first.aligned_cols == 105 and first.sum_probs == pytest.approx(52.4)
    assert first.indices_query[0] == 2  # 'Q T1078  3 APTP...': 1-based 3 -> 0-based 2
    assert first.indices_hit[0] == 0
    assert first.query.startswith("APTPADKSMMAAVPEWTITNLKRVCNAGNTSCTWTFGVDTHLA--TAT")
    names = [
        h.name.split()[0] for h in parsers.parse_hhr((data_dir / "msas/openfold_short/pdb70_hits.hhr").read_text())
    ]
    assert names == ["1HF9_B", "2CRB_A", "4ZEY_A", "3U8V_A", "1PSM_A", "5KC1_F", "5KC1_J", "3ZEE_A", "4I6P_A", "2Q2K_A"]
    assert parsers.parse_hhr("Query x\nMatch_columns 3\n") == []


@pytest.mark.parametrize("target,count", sorted(README_HMMSEARCH_ROWS.items()))
def test_hmmsearch_sto_real_files(data_dir, target, count):
    query = _query(data_dir, target).sequence
    hits = parsers.parse_hmmsearch_sto((data_dir / "msas" / target / "hmm_output.sto").read_text(), query)
    assert len(hits) == count
    assert hits[0].name == target  # the target itself ranks first
    for hit in hits[:100] + hits[-100:]:
        assert re.fullmatch(r"[a-z0-9]+_\w+", hit.name)
        assert hit.sum_probs is None
        assert hit.query == query and hit.indices_query == list(range(len(query)))
        assert len(hit.indices_hit) == len(query)  # one per HMM match state
        assert hit.aligned_cols == sum(i >= 0 for i in hit.indices_hit)
        assert hit.hit_sequence == hit.hit_sequence.upper()


def test_hmmsearch_sto_insertions_and_offsets(data_dir):
    query = _query(data_dir, "4zey_A").sequence
    hits = parsers.parse_hmmsearch_sto((data_dir / "msas/4zey_A/hmm_output.sto").read_text(), query)
    first = hits[0]  # 4zey_A/2-84: starts at residue 2 -> index 1; column 0 is a gap.
    assert first.indices_hit[:3] == [-1, 1, 2]
    hit = next(h for h in hits if h.name == "6vfj_B" and h.index == 126)
    # 'ehr' inserted after residue index 100: kept (upper-cased) in hit_sequence, skipped
    # by the indices.
    assert len(hit.hit_sequence) == len(query) + 3
    assert hit.indices_hit[37:39] == [100, 104]
    crb = next(h for h in hits if h.name == "2crb_A")
    assert crb.indices_hit[1] == 7  # /8-90 -> first residue index 7


def test_fasta_real_files(data_dir):
    for path in sorted((data_dir / "seqs").glob("*.fasta")):
        records = parsers.read_fasta(path)
        assert records and all(r.sequence and r.sequence.isupper() for r in records)
    seqres = parsers.read_fasta(data_dir / "seqs/structures_seqres.fasta")
    assert len(seqres) == 49
    assert seqres[0] == FastaRecord(
        "1psm_A", "1psm_A structures/mmcif/1psm.cif chain A length 38", "EAYKKAKQASQDAEQAAKDAENASKEAEEAAKEAVNLK"
    )
    t1078 = parsers.read_fasta(data_dir / "seqs/T1078.fasta")[0]
    assert t1078.name == "T1078"
    assert t1078.description == "T1078 Tsp1, Trichoderma virens, 138 residues|"
    assert len(t1078.sequence) == 138
    kc1 = parsers.read_fasta(data_dir / "seqs/5kc1_A.fasta")[0]  # 80-column lines
    assert len(kc1.sequence) == 226


# ---------------------------------------------------------------------------------------
# FASTA rules and errors (malformed variants of real files).
# ---------------------------------------------------------------------------------------


def test_fasta_lowercase_stop_and_ambiguity_codes():
    records = parsers.parse_fasta(">a desc here\nmkv\nLL*\n\n>b\nXBZUO\n")
    assert records == [FastaRecord("a", "a desc here", "MKVLL"), FastaRecord("b", "b", "XBZUO")]


def test_sanitize_name():
    assert parsers.sanitize_name("tr|A0A0|X_HUMAN/1-5") == "tr_A0A0_X_HUMAN_1-5"
    assert parsers.sanitize_name("../../etc") == "_.._etc"
    assert parsers.sanitize_name("...") == "unnamed"
    assert parsers.sanitize_name("a" * 500) == "a" * 128
    assert FastaRecord("6KWC_1 x", "d", "A").safe_name == "6KWC_1_x"


def _write_variant(tmp_path, data_dir, target, mutate) -> Path:
    lines = (data_dir / "seqs" / f"{target}.fasta").read_text().splitlines()
    lines = mutate(lines)
    path = tmp_path / f"{target}_bad.fasta"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fasta_illegal_letter_names_file_record_line(tmp_path, data_dir):
    def mutate(lines):
        lines[2] = lines[2][:10] + "J" + lines[2][11:]
        return lines

    path = _write_variant(tmp_path, data_dir, "5kc1_A", mutate)
    with pytest.raises(ParseError) as info:
        parsers.read_fasta(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.source, err.line, err.record) == (str(path), 3, "5kc1_A")
    assert str(path) in str(err) and "line 3" in str(err) and "'J'" in str(err)
    assert "column 11" in str(err)


@pytest.mark.parametrize("bad", ["1", "-", "*", "."])
def test_fasta_other_illegal_characters(bad):
    with pytest.raises(ParseError, match=re.escape(repr(bad))):
        parsers.parse_fasta(f">q\nMKV{bad}LL\n")


def test_fasta_missing_header(tmp_path, data_dir):
    path = _write_variant(tmp_path, data_dir, "1psm_A", lambda lines: lines[1:])
    with pytest.raises(ParseError, match="before the first header") as info:
        parsers.read_fasta(path)
    assert info.value.line == 1 and str(path) in str(info.value)


def test_fasta_empty_header_and_blank_sequence(tmp_path, data_dir):
    path = _write_variant(tmp_path, data_dir, "1psm_A", lambda lines: [">"] + lines[1:])
    with pytest.raises(ParseError, match="empty header") as info:
        parsers.read_fasta(path)
    assert info.value.line == 1
    path = _write_variant(tmp_path, data_dir, "2q2k_A", lambda lines: lines + [">second_chain", "", ">third", "MKV"])
    with pytest.raises(ParseError, match="no sequence") as info:
        parsers.read_fasta(path)
    assert info.value.record == "second_chain" and info.value.line == 3


def test_fasta_empty_input():
    with pytest.raises(ParseError, match="no FASTA record"):
        parsers.parse_fasta("\n\n", source="empty.fasta")
    with pytest.raises(FileNotFoundError):
        parsers.read_fasta("/nonexistent/x.fasta")


# ---------------------------------------------------------------------------------------
# A3M / Stockholm / HHR errors and leniencies.
# ---------------------------------------------------------------------------------------


def test_a3m_row_length_mismatch_names_record_and_line(tmp_path, data_dir):
    lines = (data_dir / "msas/1psm_A/bfd_uniclust_hits.a3m").read_text().splitlines()
    assert lines[8].startswith(">") and not lines[9].startswith(">")
    record = lines[8][1:].split()[0]
    lines[9] = lines[9][:-1]  # drop the last aligned residue
    path = tmp_path / "bfd_uniclust_hits.a3m"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParseError) as info:
        parsers.parse_a3m(path.read_text(), source=str(path))
    err = info.value
    assert (err.line, err.record, err.source) == (9, record, str(path))
    assert "37 columns" in str(err) and "query has 38" in str(err)


def test_a3m_sequence_before_header_and_empty():
    with pytest.raises(ParseError, match="before the first header"):
        parsers.parse_a3m("MKV\n>q\nMKV\n")
    with pytest.raises(ParseError, match="no sequence"):
        parsers.parse_a3m("")


def test_a3m_colabfold_header_and_nul_bytes(data_dir):
    text = (data_dir / "msas/102m_A/non_pairing.a3m").read_text()
    reference = parsers.parse_a3m(text)
    variant = "#154\t1\n" + text.replace("\n>", "\n\x00>", 3)
    parsed = parsers.parse_a3m(variant)
    assert parsed.sequences == reference.sequences
    assert parsed.deletion_matrix == reference.deletion_matrix


def test_a3m_unknown_letters_are_not_errors():
    msa = parsers.parse_a3m(">q\nMKVL\n>h1\nM.kJ-*\n>h2 desc\nBZ..OU\n")
    assert msa.sequences == ["MKVL", "MJ-*", "BZOU"]
    assert msa.deletion_matrix == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert msa.descriptions == ["q", "h1", "h2 desc"]


def test_stockholm_errors_name_record_and_line(tmp_path, data_dir):
    lines = (data_dir / "msas/2q2k_A/mgnify_hits.sto").read_text().splitlines()
    index = next(
        i
        for i, l in enumerate(lines)
        if l.startswith("MGYP")
        or (l.strip() and not l.startswith("#") and not l.startswith("query") and not l.startswith("//"))
    )
    name, aligned = lines[index].split()
    lines[index] = f"{name} {aligned[:-2]}"
    path = tmp_path / "mgnify_hits.sto"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParseError) as info:
        parsers.parse_stockholm(path.read_text(), source=str(path))
    assert (info.value.record, info.value.line) == (name, index + 1)
    assert str(path) in str(info.value)
    lines[index] = f"{name} {aligned} extra"
    with pytest.raises(ParseError, match="fields") as info:
        parsers.parse_stockholm("\n".join(lines), source="x.sto")
    assert info.value.line == index + 1
    with pytest.raises(ParseError, match="no sequence"):
        parsers.parse_stockholm("# STOCKHOLM 1.0\n//\n")


def test_hhr_malformed_line(tmp_path, data_dir):
    lines = (data_dir / "msas/openfold_short/pdb70_hits.hhr").read_text().splitlines()
    index = next(
        i for i, l in enumerate(lines) if l.startswith("T ") and l.split()[1] not in ("Consensus", "ss_dssp", "ss_pred")
    )
    lines[index] = lines[index].replace("(", "[")
    with pytest.raises(ParseError) as info:
        parsers.parse_hhr("\n".join(lines), source="pdb70_hits.hhr")
    assert info.value.line == index + 1 and "pdb70_hits.hhr" in str(info.value)
    assert info.value.record == "1HF9_B"


def test_msa_dataclass():
    with pytest.raises(ValueError):
        Msa(["A"], [[0], [0]], ["a"])
    msa = Msa(["AB", "A-"], [[0, 0], [1, 0]], ["q", "h"])
    assert len(msa.truncate(1)) == 1 and len(msa) == 2
