"""Protein structure container and PDB / mmCIF input-output.

A :class:`Protein` holds one model of a (possibly multi-chain) protein in
AlphaFold's atom37 representation: every residue has 37 atom slots ordered as
``residue_constants.atom_types`` (N, CA, C, CB, O, CG, ...), with a mask saying
which slots are filled.

Parsing conventions (shared by the PDB and mmCIF readers):

* Only protein residues are kept.  A residue is protein if

  - it comes from an ``ATOM`` record and is not a nucleotide, or
  - it is selenomethionine (``MSE``), read as MET with its ``SE`` atom stored
    in the ``SD`` slot (what AlphaFold's data pipeline does), or
  - it is a ``HETATM`` residue that the file itself declares to be part of a
    peptide chain: in mmCIF, its ``label_entity_id`` is a polypeptide entity;
    in PDB, a ``MODRES`` record lists it with an amino-acid parent.

  When an mmCIF file has ``_entity_poly`` information, a residue of a
  non-peptide entity (DNA, RNA, ligand, water) is dropped even if it was
  written as ``ATOM``.  Waters, ligands and ions are therefore skipped.
* Residue names outside the 20 standard amino acids (other than MSE) become
  ``UNK`` (aatype 20), as in AlphaFold's ``protein.from_pdb_string``.
* Only atoms whose name is one of the 37 atom types are stored; hydrogens
  (and deuteriums) are ignored.  A residue with no such atom is dropped, as in
  AlphaFold.
* Alternate locations: each atom takes its highest-occupancy altloc (the
  first one in the file on a tie).  When a residue position holds two residue
  types (microheterogeneity), the type whose heavy atoms have the highest
  mean occupancy wins (the first on a tie).
* ``model`` is a 0-based index into the models of the file (NMR ensembles);
  the first model is used by default.
* Residues keep author numbering (``auth_seq_id`` in mmCIF, resSeq in PDB)
  and author chain ids; unobserved residues simply do not appear.

Input errors (empty text, no protein residues, absent chain or model, an
unreadable file) raise :class:`ValueError` with the source name in the
message.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import string
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxfold.common import residue_constants

# Chain ids usable in PDB files, in the order AlphaFold assigns them.
PDB_CHAIN_IDS = string.ascii_uppercase + string.ascii_lowercase + string.digits
PDB_MAX_CHAINS = len(PDB_CHAIN_IDS)

_NUM_ATOMS = residue_constants.atom_type_num
_UNK = residue_constants.unk_restype_index

# Residue names of nucleotides: ATOM records that must not become UNK protein
# residues when the file carries no entity information.
_NUCLEOTIDES = frozenset(["A", "C", "G", "U", "T", "I", "N", "DA", "DC", "DG", "DT", "DU", "DI", "DN"])
_HYDROGEN_ELEMENTS = frozenset(["H", "D", "T"])


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Protein:
    """One model of a protein in atom37 representation.

    Attributes:
      atom_positions: ``[N_res, 37, 3]`` float32 Cartesian coordinates in
        angstroms, atom slots ordered as ``residue_constants.atom_types``.
      atom_mask: ``[N_res, 37]`` float32, 1.0 where the atom is present.
      aatype: ``[N_res]`` int32 residue type in AlphaFold order
        (``residue_constants.restypes``), 20 = unknown.
      residue_index: ``[N_res]`` int32 residue number as written in the file
        (author numbering); not necessarily contiguous or starting at 1.
      chain_index: ``[N_res]`` int32 index into ``chain_ids``.
      chain_ids: tuple of author chain ids; ``chain_ids[chain_index[i]]`` is
        the chain of residue ``i``.
      b_factors: ``[N_res, 37]`` float32 B-factors (or pLDDT for predictions).
      insertion_codes: optional ``[N_res]`` array of str, '' for none.  Parsers
        only fill it when at least one residue has an insertion code.

    Arrays are converted to numpy with the dtypes above on construction.
    Equality is identity (``eq=False``) because element-wise array
    comparison has no single truth value.
    """

    atom_positions: np.ndarray
    atom_mask: np.ndarray
    aatype: np.ndarray
    residue_index: np.ndarray
    chain_index: np.ndarray
    chain_ids: tuple[str, ...]
    b_factors: np.ndarray
    insertion_codes: np.ndarray | None = None

    def __post_init__(self):
        def setf(name, value):
            # Frozen dataclass: normalise fields through object.__setattr__.
            object.__setattr__(self, name, value)

        setf("atom_positions", np.asarray(self.atom_positions, dtype=np.float32))
        setf("atom_mask", np.asarray(self.atom_mask, dtype=np.float32))
        setf("b_factors", np.asarray(self.b_factors, dtype=np.float32))
        for name in ("aatype", "residue_index", "chain_index"):
            arr = np.asarray(getattr(self, name))
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                if not np.all(np.equal(np.mod(arr, 1), 0)):
                    raise ValueError(f"Protein.{name} must hold integers, got dtype {arr.dtype}")
            setf(name, arr.astype(np.int32))
        if isinstance(self.chain_ids, str):
            raise ValueError("Protein.chain_ids must be a sequence of str, not a single str")
        setf("chain_ids", tuple(str(c) for c in self.chain_ids))

        n = self.aatype.shape[0] if self.aatype.ndim == 1 else None
        if n is None:
            raise ValueError(f"Protein.aatype must be [N_res], got shape {self.aatype.shape}")
        expected = {
            "atom_positions": (n, _NUM_ATOMS, 3),
            "atom_mask": (n, _NUM_ATOMS),
            "residue_index": (n,),
            "chain_index": (n,),
            "b_factors": (n, _NUM_ATOMS),
        }
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"Protein.{name} must have shape {shape} for N_res={n} (from aatype), got {got}")
        if self.insertion_codes is not None:
            codes = np.asarray(self.insertion_codes, dtype=str)
            if codes.shape != (n,):
                raise ValueError(f"Protein.insertion_codes must have shape {(n,)}, got {codes.shape}")
            setf("insertion_codes", codes)
        if n and (self.aatype.min() < 0 or self.aatype.max() > _UNK):
            raise ValueError(
                f"Protein.aatype values must lie in [0, {_UNK}], got range [{self.aatype.min()}, {self.aatype.max()}]"
            )
        if len(set(self.chain_ids)) != len(self.chain_ids):
            raise ValueError(f"Protein.chain_ids must be unique, got {self.chain_ids}")
        if any(not c for c in self.chain_ids):
            raise ValueError("Protein.chain_ids must not contain empty strings")
        if n and (self.chain_index.min() < 0 or self.chain_index.max() >= len(self.chain_ids)):
            raise ValueError(
                f"Protein.chain_index values must index chain_ids (0..{len(self.chain_ids) - 1}), "
                f"got range [{self.chain_index.min()}, {self.chain_index.max()}]"
            )

    @property
    def num_res(self) -> int:
        return int(self.aatype.shape[0])

    def __repr__(self) -> str:
        # The default dataclass repr would print every coordinate.
        return f"Protein(num_res={self.num_res}, chain_ids={self.chain_ids}, atoms={int((self.atom_mask > 0.5).sum())})"


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _resolve_atom(atom):
    """Returns the highest-occupancy altloc of a (possibly disordered) atom."""
    if not atom.is_disordered():
        return atom
    best, best_occ = None, -np.inf
    # child_dict keeps file order, so a strict '>' keeps the first on ties.
    for child in atom.child_dict.values():
        occ = child.get_occupancy()
        occ = -np.inf if occ is None else occ
        if best is None or occ > best_occ:
            best, best_occ = child, occ
    return best


def _is_hydrogen(atom) -> bool:
    element = (atom.element or "").strip().upper()
    if element:
        return element in _HYDROGEN_ELEMENTS
    return atom.get_id().lstrip("0123456789").upper().startswith(("H", "D"))


def _resolve_residue(res):
    """Picks one residue type at a position holding several (microheterogeneity)."""
    if res.is_disordered() != 2:  # 2 marks a DisorderedResidue in Biopython.
        return res
    best, best_occ = None, -np.inf
    for child in res.child_dict.values():
        occs = [_resolve_atom(a).get_occupancy() or 0.0 for a in child if not _is_hydrogen(_resolve_atom(a))]
        occ = float(np.mean(occs)) if occs else -np.inf
        if best is None or occ > best_occ:
            best, best_occ = child, occ
    return best


def _parse_modres(pdb_text: str) -> set[tuple[str, int, str]]:
    """(chain, resSeq, iCode) of MODRES records whose parent is an amino acid."""
    keys = set()
    for line in pdb_text.splitlines():
        if not line.startswith("MODRES"):
            continue
        line = line.ljust(80)
        parent = line[24:27].strip()
        if parent not in residue_constants.restype_3to1:
            continue
        try:
            keys.add((line[16].strip(), int(line[18:22]), line[22].strip()))
        except ValueError:
            continue  # A malformed MODRES line only loses the annotation.
    return keys


def _cif_peptide_residue_keys(mmcif_dict) -> tuple[set | None, set | None]:
    """Classifies mmCIF residues by entity, keyed by author ids.

    Returns ``(peptide, non_peptide)`` sets of
    ``(auth_asym_id, auth_seq_id, ins_code, comp_id)``, or ``(None, None)``
    when the file has no usable entity information.
    """
    try:
        ent_ids = mmcif_dict["_entity_poly.entity_id"]
        ent_types = mmcif_dict["_entity_poly.type"]
        site_entity = mmcif_dict["_atom_site.label_entity_id"]
        chains = mmcif_dict["_atom_site.auth_asym_id"]
        seqs = mmcif_dict.get("_atom_site.auth_seq_id", mmcif_dict["_atom_site.label_seq_id"])
        comps = mmcif_dict["_atom_site.label_comp_id"]
        icodes = mmcif_dict["_atom_site.pdbx_PDB_ins_code"]
    except KeyError:
        return None, None
    peptide_entities = {e for e, t in zip(ent_ids, ent_types) if "polypeptide" in t.lower()}
    peptide, non_peptide = set(), set()
    for ent, ch, sq, ic, comp in zip(site_entity, chains, seqs, icodes, comps):
        try:
            key = (ch, int(sq), "" if ic in (".", "?") else ic, comp)
        except ValueError:
            continue
        (peptide if ent in peptide_entities else non_peptide).add(key)
    return peptide, non_peptide


def _check_text(text: str, source: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{source}: expected file contents as str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{source}: empty file")


def _protein_from_structure(
    structure,
    *,
    chain_id: str | None,
    model: int,
    source: str,
    is_protein_residue,
) -> Protein:
    """Converts one model of a Biopython structure to a Protein."""
    models = list(structure.get_models())
    if not models:
        raise ValueError(f"{source}: no atom records (no models) found")
    if not isinstance(model, (int, np.integer)) or not 0 <= model < len(models):
        raise ValueError(
            f"{source}: model index {model!r} out of range; the file has "
            f"{len(models)} model(s) (0-based index 0..{len(models) - 1})"
        )
    bio_model = models[model]

    positions, masks, aatypes, resnums, chain_idx, bfacs, icodes = [], [], [], [], [], [], []
    chain_ids: list[str] = []
    all_chains: list[str] = []
    for chain in bio_model:
        cid = str(chain.id).strip()
        all_chains.append(cid)
        if chain_id is not None and cid != chain_id:
            continue
        for res in chain:
            res = _resolve_residue(res)
            resname = res.get_resname().strip()
            hetflag, resseq, icode = res.id
            icode = icode.strip()
            if not is_protein_residue(cid, hetflag, resseq, icode, resname):
                continue
            is_mse = resname == "MSE"
            one = residue_constants.restype_3to1.get("MET" if is_mse else resname)
            aatype = residue_constants.restype_order[one] if one is not None else _UNK
            pos = np.zeros((_NUM_ATOMS, 3), np.float32)
            mask = np.zeros((_NUM_ATOMS,), np.float32)
            bfac = np.zeros((_NUM_ATOMS,), np.float32)
            for atom in res:
                atom = _resolve_atom(atom)
                if _is_hydrogen(atom):
                    continue
                name = atom.get_id().strip()
                if is_mse and name == "SE":
                    name = "SD"  # Selenium takes sulphur's slot in MET.
                slot = residue_constants.atom_order.get(name)
                if slot is None:
                    continue
                pos[slot] = atom.get_coord()
                mask[slot] = 1.0
                bfac[slot] = atom.get_bfactor()
            if mask.sum() < 0.5:
                continue  # No atom37 atom: nothing to place (AlphaFold skips these too).
            if cid not in chain_ids:
                chain_ids.append(cid)
            positions.append(pos)
            masks.append(mask)
            aatypes.append(aatype)
            resnums.append(resseq)
            chain_idx.append(chain_ids.index(cid))
            bfacs.append(bfac)
            icodes.append(icode)

    if not aatypes:
        if chain_id is not None:
            if chain_id in all_chains:
                raise ValueError(f"{source}: chain {chain_id!r} has no protein residues")
            available = sorted(set(all_chains))
            raise ValueError(
                f"{source}: chain {chain_id!r} not found; available chains: "
                f"{', '.join(repr(c) for c in available) or 'none'}"
            )
        raise ValueError(f"{source}: no protein residues found")

    return Protein(
        atom_positions=np.stack(positions),
        atom_mask=np.stack(masks),
        aatype=np.array(aatypes, np.int32),
        residue_index=np.array(resnums, np.int32),
        chain_index=np.array(chain_idx, np.int32),
        chain_ids=tuple(chain_ids),
        b_factors=np.stack(bfacs),
        insertion_codes=np.array(icodes, dtype=str) if any(icodes) else None,
    )


def from_pdb_string(
    pdb_str: str, chain_id: str | None = None, model: int = 0, *, source: str = "<pdb string>"
) -> Protein:
    """Parses PDB-format text into a :class:`Protein`.

    Args:
      pdb_str: contents of a PDB file.
      chain_id: author chain id to keep; ``None`` keeps every protein chain.
      model: 0-based model index (NMR ensembles); default the first model.
      source: name used in error messages (``from_file`` passes the path).

    Returns:
      The protein residues of that model (see the module docstring for which
      residues and atoms are kept).

    Raises:
      ValueError: empty or unreadable text, no protein residues, absent
        chain (the message lists the available ones) or model.
    """
    from Bio.PDB import PDBParser

    _check_text(pdb_str, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = PDBParser(QUIET=True).get_structure("none", io.StringIO(pdb_str))
    except Exception as e:  # Biopython signals malformed text in many ways.
        raise ValueError(f"{source}: could not parse PDB text: {e}") from e

    modres = _parse_modres(pdb_str)

    def is_protein_residue(cid, hetflag, resseq, icode, resname):
        if hetflag == " ":
            return resname not in _NUCLEOTIDES
        if resname == "MSE":
            return True
        return hetflag != "W" and (cid, resseq, icode) in modres

    return _protein_from_structure(
        structure,
        chain_id=chain_id,
        model=model,
        source=source,
        is_protein_residue=is_protein_residue,
    )


def from_mmcif_string(
    mmcif_str: str, chain_id: str | None = None, model: int = 0, *, source: str = "<mmCIF string>"
) -> Protein:
    """Parses mmCIF text into a :class:`Protein`.

    Chains are author chains (``auth_asym_id``) and residues keep author
    numbering (``auth_seq_id``), as Biopython's ``MMCIFParser`` reads them.

    Args:
      mmcif_str: contents of an mmCIF file.
      chain_id: author chain id to keep; ``None`` keeps every protein chain.
      model: 0-based model index (NMR ensembles); default the first model.
      source: name used in error messages (``from_file`` passes the path).

    Raises:
      ValueError: as :func:`from_pdb_string`.
    """
    from Bio.PDB import MMCIFParser
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    _check_text(mmcif_str, source)
    parser = MMCIFParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = parser.get_structure("none", io.StringIO(mmcif_str))
    except KeyError as e:
        raise ValueError(f"{source}: not a usable mmCIF file (missing field {e})") from e
    except Exception as e:  # Biopython signals malformed text in many ways.
        raise ValueError(f"{source}: could not parse mmCIF text: {e}") from e

    # The parser keeps the raw dictionary it read; entity types come from it.
    mmcif_dict = getattr(parser, "_mmcif_dict", None)
    if mmcif_dict is None:  # Future Biopython without the attribute.
        mmcif_dict = MMCIF2Dict(io.StringIO(mmcif_str))
    peptide, non_peptide = _cif_peptide_residue_keys(mmcif_dict)

    def is_protein_residue(cid, hetflag, resseq, icode, resname):
        if hetflag == "W":
            return False
        if peptide is not None:
            key = (cid, resseq, icode, resname)
            if key in peptide:
                return True
            if key in non_peptide:
                return False
        # No entity information for this residue: fall back on record types.
        if hetflag == " ":
            return resname not in _NUCLEOTIDES
        return resname == "MSE"

    return _protein_from_structure(
        structure,
        chain_id=chain_id,
        model=model,
        source=source,
        is_protein_residue=is_protein_residue,
    )


_PDB_SUFFIXES = (".pdb", ".ent")
_CIF_SUFFIXES = (".cif", ".mmcif")


def from_file(path, chain_id: str | None = None, model: int = 0) -> Protein:
    """Reads a PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``) file.

    A trailing ``.gz`` is decompressed.  Format is chosen from the suffix.

    Raises:
      ValueError: unknown suffix, unreadable file, or any parse error (the
        message names the file).
    """
    path = os.fspath(path)
    name = path.lower()
    opener = open
    if name.endswith(".gz"):
        name = name[:-3]
        opener = gzip.open
    if name.endswith(_PDB_SUFFIXES):
        parse = from_pdb_string
    elif name.endswith(_CIF_SUFFIXES):
        parse = from_mmcif_string
    else:
        raise ValueError(
            f"{path}: unknown structure file suffix; expected one of "
            f"{', '.join(_PDB_SUFFIXES + _CIF_SUFFIXES)} (optionally + .gz)"
        )
    try:
        with opener(path, "rt") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: could not read file: {e}") from e
    return parse(text, chain_id=chain_id, model=model, source=path)


# --------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------


def from_prediction(
    aatype,
    final_atom_positions,
    final_atom_mask,
    residue_index,
    plddt=None,
    chain_index=None,
    *,
    chain_ids: Sequence[str] | None = None,
) -> Protein:
    """Builds a :class:`Protein` from model outputs.

    Args:
      aatype: ``[N_res]`` int residue types.
      final_atom_positions: ``[N_res, 37, 3]`` predicted atom37 coordinates.
      final_atom_mask: ``[N_res, 37]`` mask of atoms that exist.
      residue_index: ``[N_res]`` residue numbers, stored unchanged.  (AlphaFold
        numbers its features from 0 and adds 1 here; jaxfold leaves that
        choice to the caller: pass ``residue_index + 1`` to reproduce it.)
      plddt: optional ``[N_res]`` per-residue pLDDT (0-100); copied into every
        atom's B-factor, as AlphaFold does.  Zeros when absent.
      chain_index: optional ``[N_res]`` chain index (default all 0).
      chain_ids: optional chain id per chain index; default 'A', 'B', ...
        (``PDB_CHAIN_IDS`` order, then two-letter ids past 62 chains).

    Any array type numpy can read (numpy, jax) is accepted.
    """
    aatype = np.asarray(aatype)
    n = aatype.shape[0]
    mask = np.asarray(final_atom_mask, dtype=np.float32)
    if plddt is None:
        b_factors = np.zeros_like(mask)
    else:
        plddt = np.asarray(plddt, dtype=np.float32)
        if plddt.shape != (n,):
            raise ValueError(f"plddt must have shape {(n,)}, got {plddt.shape}")
        b_factors = np.broadcast_to(plddt[:, None], (n, _NUM_ATOMS)).copy()
    if chain_index is None:
        chain_index = np.zeros((n,), np.int32)
    chain_index = np.asarray(chain_index)
    if chain_ids is None:
        num_chains = int(chain_index.max()) + 1 if n else 0
        chain_ids = [_default_chain_id(i) for i in range(num_chains)]
    return Protein(
        atom_positions=final_atom_positions,
        atom_mask=mask,
        aatype=aatype,
        residue_index=residue_index,
        chain_index=chain_index,
        chain_ids=tuple(chain_ids),
        b_factors=b_factors,
    )


def _default_chain_id(i: int) -> str:
    if i < PDB_MAX_CHAINS:
        return PDB_CHAIN_IDS[i]
    # Beyond 62 chains only mmCIF can hold them: 'AA', 'BA', ..., then three letters.
    i -= PDB_MAX_CHAINS
    width = 2
    while i >= 26**width:
        i -= 26**width
        width += 1
    out = ""
    for _ in range(width):
        out += string.ascii_uppercase[i % 26]
        i //= 26
    return out


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _res_name(aatype: int) -> str:
    return residue_constants.resnames[int(aatype)]  # 20 -> 'UNK'


def _element(atom_name: str) -> str:
    # Every atom37 name starts with its one-letter element (C, N, O, S).
    return atom_name.lstrip("0123456789")[0]


def _pdb_atom_name(name: str, element: str) -> str:
    """Places an atom name in PDB columns 13-16.

    Four-character names fill the field.  Otherwise the element symbol is
    right-aligned in columns 13-14, so names of one-letter elements start in
    column 14 (' CA ') and names of two-letter elements in column 13 ('FE  ').
    """
    if len(name) > 4 or not name:
        raise ValueError(f"PDB atom names have 1-4 characters, got {name!r}")
    if len(name) == 4:
        return name
    if len(element) == 2:
        return f"{name:<4}"
    return f" {name:<3}"


def _prot_insertion_codes(prot: Protein) -> list[str]:
    if prot.insertion_codes is None:
        return [""] * prot.num_res
    return [str(c) for c in prot.insertion_codes]


def to_pdb(prot: Protein) -> str:
    """Writes a :class:`Protein` as PDB text.

    One ``ATOM`` record per present atom (mask > 0.5) in atom37 order, a
    ``TER`` record after each chain and a final ``END`` (every record 80 columns).  Occupancy is 1.00;
    the B-factor column comes from ``prot.b_factors``.

    Raises:
      ValueError: a chain id that is not exactly one character, or a value
        that does not fit its fixed-width column (residue number, coordinate,
        B-factor, more than 99999 atom serial numbers: use :func:`to_mmcif`).
    """
    for cid in prot.chain_ids:
        if len(cid) != 1:
            raise ValueError(
                f"PDB chain ids must be single characters, got {cid!r}; rename the chains or write mmCIF (to_mmcif)"
            )
    if prot.num_res and (prot.residue_index.min() < -999 or prot.residue_index.max() > 9999):
        raise ValueError("PDB residue numbers must lie in [-999, 9999]; write mmCIF instead")
    present = prot.atom_mask > 0.5
    pos = prot.atom_positions[present]
    if pos.size and (pos.min() < -999.999 or pos.max() > 9999.999):
        raise ValueError("coordinates outside the PDB column range [-999.999, 9999.999]")
    bf = prot.b_factors[present]
    if bf.size and (bf.min() < -99.99 or bf.max() > 999.99):
        raise ValueError("B-factors outside the PDB column range [-99.99, 999.99]")
    if not np.all(np.isfinite(pos)):
        raise ValueError("non-finite coordinates cannot be written")

    icodes = _prot_insertion_codes(prot)
    lines = []
    serial = 1
    n = prot.num_res
    for i in range(n):
        res_name = _res_name(prot.aatype[i])
        chain = prot.chain_ids[prot.chain_index[i]]
        resnum = int(prot.residue_index[i])
        icode = icodes[i][:1]
        for slot, atom_name in enumerate(residue_constants.atom_types):
            if not present[i, slot]:
                continue
            element = _element(atom_name)
            x, y, z = prot.atom_positions[i, slot]
            # Columns: 1-6 record, 7-11 serial, 13-16 name, 17 altloc,
            # 18-20 residue, 22 chain, 23-26 resSeq, 27 iCode, 31-54 xyz,
            # 55-60 occupancy, 61-66 B-factor, 77-78 element, 79-80 charge.
            lines.append(
                f"{'ATOM':<6}{serial:>5} {_pdb_atom_name(atom_name, element)}{'':1}"
                f"{res_name:>3} {chain:1}{resnum:>4}{icode:1}   "
                f"{x:>8.3f}{y:>8.3f}{z:>8.3f}{1.0:>6.2f}{prot.b_factors[i, slot]:>6.2f}"
                f"{'':10}{element:>2}{'':2}"
            )
            serial += 1
        last_of_chain = i == n - 1 or prot.chain_index[i + 1] != prot.chain_index[i]
        if last_of_chain:
            lines.append(f"{'TER':<6}{serial:>5}      {res_name:>3} {chain:1}{resnum:>4}{icode:1}".ljust(80))
            serial += 1
        if serial > 100000:
            raise ValueError("PDB atom serial numbers stop at 99999; write mmCIF (to_mmcif)")
    # Padded to the record's 80 columns: parsers that read the record name from columns 1-6
    # (Biopython's "END   ") otherwise warn about an unrecognized record on every file.
    lines.append("END".ljust(80))
    lines.append("")
    return "\n".join(lines)


_CIF_RESERVED = re.compile(r"^(data_|loop_|save_|global_|stop_)", re.IGNORECASE)


def _cif_value(value: Any) -> str:
    """Formats one mmCIF token, quoting when the bare text would misparse."""
    s = str(value)
    if s == "":
        return "?"
    needs_quotes = (
        any(c.isspace() for c in s) or s[0] in "_#$'\";[]" or s in (".", "?") or _CIF_RESERVED.match(s) is not None
    )
    if not needs_quotes:
        return s
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    raise ValueError(f"cannot quote mmCIF value {s!r}")


def _cif_loop(category: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["loop_"] + [f"_{category}.{c}" for c in columns]
    for row in rows:
        out.append(" ".join(_cif_value(v) if not isinstance(v, _Raw) else v.text for v in row))
    out.append("#")
    return out


class _Raw:
    """An already formatted mmCIF token (numbers, or deliberate '.'/'?')."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def to_mmcif(prot: Protein, name: str = "jaxfold") -> str:
    """Writes a :class:`Protein` as an mmCIF data block.

    Each chain gets its own polymer entity whose sequence is the chain's
    residues in order (unobserved residues are unknown to a Protein, so
    ``label_seq_id`` runs 1..n over the residues present).  Label asym ids are
    'A', 'B', ... in chain order; author chain ids and residue numbers go to
    ``auth_asym_id`` / ``auth_seq_id``, which Biopython reads back.
    Coordinates have 3 decimals, occupancy and B-factor 2.

    Tables: ``_entry``, ``_entity``, ``_entity_poly``, ``_entity_poly_seq``,
    ``_struct_asym``, ``_atom_site``.
    """
    block = re.sub(r"\s+", "_", str(name).strip())
    if not block:
        raise ValueError("mmCIF data block name must not be empty")
    present = prot.atom_mask > 0.5
    if not np.all(np.isfinite(prot.atom_positions[present])):
        raise ValueError("non-finite coordinates cannot be written")
    icodes = _prot_insertion_codes(prot)

    chains_in_order = []
    for c in prot.chain_index:
        if int(c) not in chains_in_order:
            chains_in_order.append(int(c))
    entity_of = {c: k + 1 for k, c in enumerate(chains_in_order)}
    label_asym = {c: _default_chain_id(k) for k, c in enumerate(chains_in_order)}

    lines = [f"data_{block}", "#", f"_entry.id {_cif_value(block)}", "#"]
    lines += _cif_loop("entity", ["id", "type"], [(_Raw(str(entity_of[c])), "polymer") for c in chains_in_order])
    lines += _cif_loop(
        "entity_poly",
        ["entity_id", "type", "pdbx_strand_id"],
        [(_Raw(str(entity_of[c])), "polypeptide(L)", prot.chain_ids[c]) for c in chains_in_order],
    )
    seq_rows = []
    label_seq = np.zeros(prot.num_res, np.int64)
    counters = {c: 0 for c in chains_in_order}
    for i in range(prot.num_res):
        c = int(prot.chain_index[i])
        counters[c] += 1
        label_seq[i] = counters[c]
        seq_rows.append((_Raw(str(entity_of[c])), _Raw(str(counters[c])), _res_name(prot.aatype[i]), "n"))
    lines += _cif_loop("entity_poly_seq", ["entity_id", "num", "mon_id", "hetero"], seq_rows)
    lines += _cif_loop(
        "struct_asym",
        ["id", "entity_id"],
        [(label_asym[c], _Raw(str(entity_of[c]))) for c in chains_in_order],
    )

    columns = [
        "group_PDB",
        "id",
        "type_symbol",
        "label_atom_id",
        "label_alt_id",
        "label_comp_id",
        "label_asym_id",
        "label_entity_id",
        "label_seq_id",
        "pdbx_PDB_ins_code",
        "Cartn_x",
        "Cartn_y",
        "Cartn_z",
        "occupancy",
        "B_iso_or_equiv",
        "auth_seq_id",
        "auth_asym_id",
        "pdbx_PDB_model_num",
    ]
    atom_rows = []
    serial = 1
    for i in range(prot.num_res):
        c = int(prot.chain_index[i])
        res_name = _res_name(prot.aatype[i])
        for slot, atom_name in enumerate(residue_constants.atom_types):
            if not present[i, slot]:
                continue
            x, y, z = prot.atom_positions[i, slot]
            atom_rows.append(
                (
                    "ATOM",
                    _Raw(str(serial)),
                    _element(atom_name),
                    atom_name,
                    _Raw("."),
                    res_name,
                    label_asym[c],
                    _Raw(str(entity_of[c])),
                    _Raw(str(label_seq[i])),
                    icodes[i] if icodes[i] else _Raw("?"),
                    _Raw(f"{x:.3f}"),
                    _Raw(f"{y:.3f}"),
                    _Raw(f"{z:.3f}"),
                    _Raw("1.00"),
                    _Raw(f"{prot.b_factors[i, slot]:.2f}"),
                    _Raw(str(int(prot.residue_index[i]))),
                    prot.chain_ids[c],
                    _Raw("1"),
                )
            )
            serial += 1
    lines += _cif_loop("atom_site", columns, atom_rows)
    lines.append("")
    return "\n".join(lines)
