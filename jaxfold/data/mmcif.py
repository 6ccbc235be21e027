"""mmCIF parsing for template featurisation, with AlphaFold2's (v2.3.2) conventions.

What is read, and how (each choice is AlphaFold's, so template features match DeepMind's):

* **Protein chains and SEQRES** come from ``_entity_poly_seq``: an entity is a protein when any of
  its monomers has ``peptide`` in its ``_chem_comp.type``; its chains come from ``_struct_asym``
  (label ``asym_id``) and are renamed to author chain IDs (``auth_asym_id``) through the
  first-model ``_atom_site`` records. One-letter codes use Biopython's *extended* 3->1 table
  (``PDBData.protein_letters_3to1_extended``, the table that was called ``protein_letters_3to1``
  in Biopython 1.79, which AlphaFold pins): modified residues map to their parent (MSE -> M,
  MLY -> K, ...); anything unknown is ``X``. Microheterogeneity (two monomers with one ``num``)
  is kept as AlphaFold keeps it: both monomers are appended.
* **SEQRES index -> observed residue**: from first-model ``_atom_site`` rows (``label_seq_id``
  minus the chain's smallest ``_entity_poly_seq.num``), recording author residue number,
  insertion code (``' '`` when unset) and Biopython's hetero flag (``' '``, ``'W'`` for water,
  ``'H_<resname>'`` for HETATM records). Unobserved SEQRES positions are ``is_missing``.
* **Coordinates** come from Biopython's ``MMCIFParser`` structure (first model), so alternate
  locations follow Biopython: for a disordered atom the altloc with the highest occupancy is
  used, the first one listed on ties; for point mutations (two residue names at one position)
  the residue Biopython leaves selected is used. Atoms go into the atom37 slot of their name;
  the selenium of MSE goes into the SD slot (AlphaFold's SE -> SD rule). Hydrogens and other
  names not in ``atom_types`` are dropped.
* **Header**: ``structure_method`` = lower-cased ``_exptl.method`` values joined by ``','``;
  ``release_date`` = the earliest ``_pdbx_audit_revision_history.revision_date`` (``None`` when
  the file has none); ``resolution`` = the last parseable value of ``_refine.ls_d_res_high``,
  ``_em_3d_reconstruction.resolution``, ``_reflns.d_resolution_high`` in that order (so the
  reflections value wins when present), 0.0 when none.

Malformed, empty or protein-free files raise :class:`MmcifParseError` (a ``ValueError``) whose
message names the file and the problem.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common import residue_constants

__all__ = [
    "MmcifParseError",
    "ResiduePosition",
    "ResidueAtPosition",
    "MmcifObject",
    "parse_mmcif_string",
    "parse_mmcif_file",
    "seqres_one_letter",
]


class MmcifParseError(ValueError):
    """An mmCIF file could not be parsed into at least one protein chain."""


@dataclasses.dataclass(frozen=True)
class ResiduePosition:
    """Author-numbered position of an observed residue."""

    chain_id: str
    residue_number: int
    insertion_code: str


@dataclasses.dataclass(frozen=True)
class ResidueAtPosition:
    """What sits at one SEQRES index of a chain: an observed residue or a gap."""

    position: ResiduePosition | None
    name: str
    is_missing: bool
    hetflag: str


@dataclasses.dataclass(frozen=True)
class _Monomer:
    mon_id: str
    num: int


def _three_to_one_table() -> dict[str, str]:
    from Bio.Data import PDBData  # pylint: disable=import-outside-toplevel

    table = getattr(PDBData, "protein_letters_3to1_extended", None)
    if table is None:  # Biopython < 1.80: the extended table had the plain name.
        table = PDBData.protein_letters_3to1
    return dict(table)


_THREE_TO_ONE = _three_to_one_table()


def seqres_one_letter(mon_id: str) -> str:
    """One-letter code of a residue name as AlphaFold's mmCIF parser assigns it."""
    code = _THREE_TO_ONE.get(mon_id, "X")
    return code if len(code) == 1 else "X"


def _is_set(value: str) -> bool:
    return value not in (".", "?")


def _loop_rows(prefix: str, mmcif_dict: Mapping[str, Sequence[str]], file_id: str) -> list[dict[str, str]]:
    """Rows of the mmCIF category ``prefix`` (e.g. ``'_exptl.'``) as dicts."""
    columns = [k for k in mmcif_dict if k.startswith(prefix)]
    if not columns:
        return []
    lengths = {len(mmcif_dict[k]) for k in columns}
    if len(lengths) != 1:
        raise MmcifParseError(
            f"{file_id}: mmCIF category {prefix[:-1]} has columns of different lengths ({sorted(lengths)})."
        )
    return [dict(zip(columns, values)) for values in zip(*(mmcif_dict[k] for k in columns))]


@dataclasses.dataclass(frozen=True)
class MmcifObject:
    """A parsed mmCIF entry (first model only), in AlphaFold's layout.

    Attributes:
      file_id: name of the entry (e.g. the lower-case PDB id).
      header: ``{'structure_method': str, 'release_date': str | None, 'resolution': float}``.
      structure: Biopython ``Model`` (first model).
      chain_to_seqres: author chain id -> one-letter SEQRES sequence, in entity order.
      seqres_to_structure: author chain id -> {SEQRES index -> ResidueAtPosition}.
      mmcif_dict: the raw ``MMCIF2Dict`` (every value a list of strings).
    """

    file_id: str
    header: Mapping[str, Any]
    structure: Any
    chain_to_seqres: Mapping[str, str]
    seqres_to_structure: Mapping[str, Mapping[int, ResidueAtPosition]]
    mmcif_dict: Mapping[str, Sequence[str]] = dataclasses.field(repr=False)

    @property
    def release_date(self) -> str | None:
        return self.header.get("release_date")

    @property
    def resolution(self) -> float:
        return self.header["resolution"]

    @property
    def structure_method(self) -> str:
        return self.header["structure_method"]

    @property
    def chain_ids(self) -> list[str]:
        return list(self.chain_to_seqres)

    def num_observed(self, chain_id: str) -> int:
        """How many SEQRES positions of ``chain_id`` have atoms in the first model."""
        return sum(not r.is_missing for r in self.seqres_to_structure[chain_id].values())

    def get_atom_positions(self, chain_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Atom37 coordinates and mask of ``chain_id``, one row per SEQRES position.

        Returns:
          ``(positions [N, 37, 3] float32, mask [N, 37] float32)``; unobserved residues and
          absent atoms are zero. Raises ``KeyError`` when a mapped residue is not in the
          Biopython structure and ``ValueError`` when ``chain_id`` is not a single chain of it.
        """
        return _atom37_for_chain(self, chain_id)


def _atom37_for_chain(obj: MmcifObject, chain_id: str) -> tuple[np.ndarray, np.ndarray]:
    num_res = len(obj.chain_to_seqres[chain_id])
    chains = [c for c in obj.structure.get_chains() if c.id == chain_id]
    if len(chains) != 1:
        raise ValueError(
            f"{obj.file_id}: expected exactly one chain with id {chain_id!r} in the structure, found {len(chains)}."
        )
    chain = chains[0]
    atom_order = residue_constants.atom_order
    sd_index = atom_order["SD"]
    positions = np.zeros((num_res, residue_constants.atom_type_num, 3), dtype=np.float32)
    mask = np.zeros((num_res, residue_constants.atom_type_num), dtype=np.float32)
    mapping = obj.seqres_to_structure[chain_id]
    for index in range(num_res):
        res_at = mapping[index]
        if res_at.is_missing:
            continue
        residue = chain[(res_at.hetflag, res_at.position.residue_number, res_at.position.insertion_code)]
        is_mse = residue.get_resname() == "MSE"
        for atom in residue.get_atoms():
            name = atom.get_name()
            slot = atom_order.get(name)
            if slot is None:
                if is_mse and name.upper() == "SE":
                    slot = sd_index
                else:
                    continue
            positions[index, slot] = atom.get_coord()
            mask[index, slot] = 1.0
    return positions, mask


def _header(mmcif_dict: Mapping[str, Sequence[str]], file_id: str) -> dict[str, Any]:
    header: dict[str, Any] = {}
    header["structure_method"] = ",".join(
        row["_exptl.method"].lower() for row in _loop_rows("_exptl.", mmcif_dict, file_id) if "_exptl.method" in row
    )
    dates = mmcif_dict.get("_pdbx_audit_revision_history.revision_date")
    header["release_date"] = min(dates) if dates else None
    header["resolution"] = 0.0
    # AlphaFold's order; a later parseable key overrides an earlier one.
    for key in ("_refine.ls_d_res_high", "_em_3d_reconstruction.resolution", "_reflns.d_resolution_high"):
        if key in mmcif_dict:
            try:
                header["resolution"] = float(mmcif_dict[key][0])
            except ValueError:
                pass
    return header


def _protein_chains(mmcif_dict: Mapping[str, Sequence[str]], file_id: str) -> dict[str, list[_Monomer]]:
    """label asym id -> monomers, for entities that contain a peptide-linked monomer."""
    polymers: dict[str, list[_Monomer]] = collections.defaultdict(list)
    for row in _loop_rows("_entity_poly_seq.", mmcif_dict, file_id):
        try:
            polymers[row["_entity_poly_seq.entity_id"]].append(
                _Monomer(mon_id=row["_entity_poly_seq.mon_id"], num=int(row["_entity_poly_seq.num"]))
            )
        except (KeyError, ValueError) as e:
            raise MmcifParseError(f"{file_id}: bad _entity_poly_seq row {row}: {e}") from e

    chem_types = {}
    for row in _loop_rows("_chem_comp.", mmcif_dict, file_id):
        chem_types[row.get("_chem_comp.id")] = row.get("_chem_comp.type", "")

    entity_to_chains: dict[str, list[str]] = collections.defaultdict(list)
    for row in _loop_rows("_struct_asym.", mmcif_dict, file_id):
        entity_to_chains[row["_struct_asym.entity_id"]].append(row["_struct_asym.id"])

    valid: dict[str, list[_Monomer]] = {}
    for entity_id, monomers in polymers.items():
        for m in monomers:
            if m.mon_id not in chem_types:
                raise MmcifParseError(f"{file_id}: monomer {m.mon_id!r} of entity {entity_id} has no _chem_comp entry.")
        if any("peptide" in chem_types[m.mon_id].lower() for m in monomers):
            for chain_id in entity_to_chains[entity_id]:
                valid[chain_id] = monomers
    return valid


_ATOM_SITE_COLUMNS = (
    "_atom_site.label_comp_id",
    "_atom_site.auth_asym_id",
    "_atom_site.label_asym_id",
    "_atom_site.auth_seq_id",
    "_atom_site.label_seq_id",
    "_atom_site.pdbx_PDB_ins_code",
    "_atom_site.group_PDB",
    "_atom_site.pdbx_PDB_model_num",
)


def _build(file_id: str, structure: Any, mmcif_dict: dict[str, Any]) -> MmcifObject:
    for key, value in list(mmcif_dict.items()):
        if not isinstance(value, list):
            mmcif_dict[key] = [value]

    missing_cols = [c for c in _ATOM_SITE_COLUMNS if c not in mmcif_dict]
    if missing_cols:
        raise MmcifParseError(f"{file_id}: no usable _atom_site loop (missing {missing_cols}).")

    header = _header(mmcif_dict, file_id)
    valid_chains = _protein_chains(mmcif_dict, file_id)
    if not valid_chains:
        raise MmcifParseError(f"{file_id}: no protein chains found (_entity_poly_seq).")
    seq_start = {cid: min(m.num for m in mons) for cid, mons in valid_chains.items()}

    label_to_author: dict[str, str] = {}
    seq_to_structure: dict[str, dict[int, ResidueAtPosition]] = {}
    columns = [mmcif_dict[c] for c in _ATOM_SITE_COLUMNS]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise MmcifParseError(f"{file_id}: _atom_site columns have different lengths.")
    for resname, auth_chain, label_chain, auth_seq, label_seq, icode, group, model in zip(*columns):
        # Only model '1' (compared as a string, as AlphaFold does).
        if model != "1":
            continue
        label_to_author[label_chain] = auth_chain
        if label_chain not in valid_chains:
            continue
        if group == "HETATM":
            hetflag = "W" if resname in ("HOH", "WAT") else "H_" + resname
        else:
            hetflag = " "
        try:
            position = ResiduePosition(
                chain_id=auth_chain, residue_number=int(auth_seq), insertion_code=icode if _is_set(icode) else " "
            )
            seq_idx = int(label_seq) - seq_start[label_chain]
        except ValueError as e:
            raise MmcifParseError(
                f"{file_id}: bad residue numbering in _atom_site of chain {auth_chain} "
                f"(auth_seq_id={auth_seq!r}, label_seq_id={label_seq!r})."
            ) from e
        seq_to_structure.setdefault(auth_chain, {})[seq_idx] = ResidueAtPosition(
            position=position, name=resname, is_missing=False, hetflag=hetflag
        )

    chain_to_seqres: dict[str, str] = {}
    for label_chain, monomers in valid_chains.items():
        if label_chain not in label_to_author or label_to_author[label_chain] not in seq_to_structure:
            raise MmcifParseError(
                f"{file_id}: protein chain {label_chain} (label_asym_id) has no atoms in the first model."
            )
        author_chain = label_to_author[label_chain]
        current = seq_to_structure[author_chain]
        for idx, monomer in enumerate(monomers):
            if idx not in current:
                current[idx] = ResidueAtPosition(position=None, name=monomer.mon_id, is_missing=True, hetflag=" ")
        chain_to_seqres[author_chain] = "".join(seqres_one_letter(m.mon_id) for m in monomers)

    return MmcifObject(
        file_id=file_id,
        header=header,
        structure=structure,
        chain_to_seqres=chain_to_seqres,
        seqres_to_structure=seq_to_structure,
        mmcif_dict=mmcif_dict,
    )


def parse_mmcif_string(mmcif_string: str, file_id: str) -> MmcifObject:
    """Parses the text of an mmCIF file (first model only).

    Raises:
      MmcifParseError: empty or malformed text, no ``_atom_site`` loop, no protein chain,
        or a protein chain without first-model atoms. The message starts with ``file_id``.
    """
    if not mmcif_string or not mmcif_string.strip():
        raise MmcifParseError(f"{file_id}: empty mmCIF file.")
    from Bio.PDB import MMCIFParser  # pylint: disable=import-outside-toplevel
    from Bio.PDB.PDBExceptions import PDBConstructionWarning  # pylint: disable=import-outside-toplevel

    parser = MMCIFParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PDBConstructionWarning)
            full = parser.get_structure(file_id, io.StringIO(mmcif_string))
        models = list(full.get_models())
    except MmcifParseError:
        raise
    except Exception as e:  # Biopython raises many types on bad input.
        raise MmcifParseError(f"{file_id}: malformed mmCIF ({type(e).__name__}: {e}).") from e
    if not models:
        raise MmcifParseError(f"{file_id}: no models / atoms in the mmCIF file.")
    mmcif_dict = parser._mmcif_dict  # pylint: disable=protected-access
    try:
        return _build(file_id, models[0], mmcif_dict)
    except MmcifParseError:
        raise
    except Exception as e:  # pragma: no cover - defensive
        raise MmcifParseError(f"{file_id}: could not parse mmCIF ({type(e).__name__}: {e}).") from e


@functools.lru_cache(maxsize=16)
def _parse_cached(path: str, mtime_ns: int, size: int, file_id: str) -> MmcifObject:
    del mtime_ns, size  # cache keys only
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:
        raise MmcifParseError(f"{path}: not a text mmCIF file ({e}).") from e
    try:
        return parse_mmcif_string(text, file_id=file_id)
    except MmcifParseError as e:
        # Name the path, not only the id.
        raise MmcifParseError(f"{path}: {str(e)[len(file_id) + 2 :]}") from e


def parse_mmcif_file(path: str | os.PathLike, file_id: str | None = None) -> MmcifObject:
    """Parses an mmCIF file; results are cached on (path, mtime, size).

    ``file_id`` defaults to the file name without extension (e.g. ``'1ubq'``). Raises
    ``FileNotFoundError`` for a missing file and :class:`MmcifParseError` (naming the path)
    for an unusable one.
    """
    path = os.fspath(path)
    stat = os.stat(path)
    if file_id is None:
        file_id = Path(path).name.split(".")[0]
    return _parse_cached(os.path.abspath(path), stat.st_mtime_ns, stat.st_size, file_id)
