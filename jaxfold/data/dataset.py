"""Training dataset: mmCIF chains + precomputed alignments -> AlphaFold training samples.

:class:`TrainingDataset` enumerates ``<pdb_id>_<chain>`` entries that have both an mmCIF
file (``<mmcif_dir>/<pdb_id>.cif``) and an alignment folder (``<alignment_dir>/<pdb_id>_<chain>/``,
OpenProteinSet layout), filters them as AlphaFold's training does (resolution, length,
single-residue dominance) and turns one of them into a fixed-size training sample:

1. raw features (AlphaFold ``DataPipeline.process``): sequence features from the mmCIF
   SEQRES, MSA features from the precomputed alignments, template features (optional);
2. ground truth: atom37 positions / mask of the chain, aligned to SEQRES, and resolution
   (plus :func:`jaxfold.data.ground_truth.make_ground_truth` when that module exists);
3. AlphaFold's TRAINING-time processing (``alphafold/model/tf/input_pipeline.py`` with
   ``is_training``): non-ensembled transforms over the full chain; per recycling iteration
   an independent MSA sample (cluster sampling, BERT masking, nearest-neighbour cluster
   profiles, extra MSA) from :mod:`jaxfold.data.feature_processing`; then a contiguous
   random crop to ``crop_size`` (the same crop for every slice, the templates and the
   ground truth) and zero padding to ``crop_size`` so every sample has the same shapes;
   ``num_iter_recycling`` drawn uniformly from ``[0, num_recycle]``; ``use_clamped_fape``
   (1.0 with probability ``data.train.use_clamped_fape_probability``, AlphaFold's 0.9).

The settings come from the config's ``[data.train]`` table (``configs/base.toml``, adjusted by
the training presets); constructor keywords override single values.

Everything is a pure function of ``(index, seed)`` and uses NumPy only (no JAX), so
samples can be produced in worker processes (:mod:`jaxfold.data.loader`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common.files import PathLike
from jaxfold.data import feature_processing as fp

logger = logging.getLogger(__name__)


__all__ = [
    "DatasetError",
    "TrainingDataset",
    "training_feature_config",
    "use_clamped_fape",
    "TrainSettings",
    "crop_and_pad",
]


class DatasetError(ValueError):
    """Unusable dataset set-up or sample; the message names the entry / files."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    crop_size: int
    max_msa_clusters: int
    max_extra_msa: int
    max_templates: int
    subsample_templates: bool
    masked_msa_replace_fraction: float
    num_recycle: int
    uniform_recycling: bool
    use_templates: bool
    max_template_hits: int
    use_clamped_fape_probability: float


def _plain(obj: Any) -> Any:
    """Config (immutable Mapping) -> plain nested dicts (picklable, editable)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------
# Crop / pad helpers.
# ---------------------------------------------------------------------------------------
def crop_and_pad(
    feats: Mapping[str, np.ndarray],
    start: int,
    length: int,
    size: int,
    schema: Mapping[str, tuple] = fp.FEATURE_SCHEMA,
    lead: int = 0,
) -> dict[str, np.ndarray]:
    """Crops every NUM_RES axis of ``feats`` to ``[start, start + length)`` and zero-pads it
    to ``size``. ``lead`` leading axes (e.g. the slice axis) precede the schema axes."""
    out = {}
    for k, v in feats.items():
        v = np.asarray(v)
        dims = schema.get(k)
        if dims is None:
            out[k] = v
            continue
        for axis, dim in enumerate(dims):
            if dim != fp.NUM_RES:
                continue
            ax = axis + lead
            v = np.take(v, np.arange(start, start + length), axis=ax)
            if size > length:
                pad = [(0, 0)] * v.ndim
                pad[ax] = (0, size - length)
                v = np.pad(v, pad)
        out[k] = v
    return out


def _read_lines(path: PathLike) -> list[str]:
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _norm_id(chain_id: str) -> str:
    pdb, _, chain = chain_id.partition("_")
    if not chain:
        raise DatasetError(f"chain id {chain_id!r} is not of the form <pdb_id>_<chain>")
    return f"{pdb.lower()}_{chain}"


# ---------------------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------------------
def use_clamped_fape(seed: int, index: int, probability: float) -> np.ndarray:
    """Whether sample ``index`` trains with clamped backbone FAPE: float32 1.0 with ``probability``
    (AlphaFold: 0.9, Suppl. 1.11.5), else 0.0. Its own random stream of ``(seed, index)``, so the
    sample's other draws do not depend on it and a resumed run draws the same."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 4]))
    return np.asarray(float(rng.random() < probability), np.float32)


def training_feature_config(config: Mapping[str, Any], settings: TrainSettings) -> Mapping[str, Any]:
    """The config :mod:`feature_processing` reads, with the training values of ``settings``.

    feature_processing implements AlphaFold's ``eval`` mode (``data.eval``); the training mode is
    the same transforms with the ``data.train`` cluster / template / masking values and no
    ensembling, so those values are put where it reads them."""
    from jaxfold.config import Config  # noqa: PLC0415

    config = config if isinstance(config, Config) else Config(_plain(config))
    model_recycle = {"model.num_recycle": settings.num_recycle} if "model" in config else {}
    return config.replace(
        **model_recycle,
        **{
            "data.common.num_recycle": settings.num_recycle,
            "data.common.max_extra_msa": settings.max_extra_msa,
            "data.eval.max_msa_clusters": settings.max_msa_clusters,
            "data.eval.max_templates": settings.max_templates,
            "data.eval.subsample_templates": settings.subsample_templates,
            "data.eval.masked_msa_replace_fraction": settings.masked_msa_replace_fraction,
            "data.eval.num_ensemble": 1,
        },
    )


class TrainingDataset:
    """AlphaFold training samples from mmCIF chains and precomputed alignments.

    Args:
      mmcif_dir: folder of ``<pdb_id>.cif`` (lower-case ids).
      alignment_dir: folder of ``<pdb_id>_<chain>/`` alignment folders (OpenProteinSet).
      config: ``jaxfold.config.model_config(...)`` (uses ``data.common`` and ``data.train``).
      chain_list: optional file of chain ids (one per line) restricting the entries.
      cluster_file: optional file, one cluster of whitespace/comma-separated chain ids per
        line; then ``sample(index, seed)`` picks a cluster uniformly, then a member.
      template_mmcif_dir: with ``data.common.use_templates``, the template structures
        (default ``mmcif_dir``); hits come from the alignment folder.
      max_template_date: template cut-off (default: each chain's release date; AlphaFold's
        featurizer also moves it to 60 days before the query's release).
      crop_size, max_msa_clusters, max_extra_msa, max_templates, num_recycle: override the
        config's values.
      min_resolution / max_resolution: keep chains with resolution in that range
        (default ``data.train.max_resolution``, AlphaFold: <= 9 Å; NMR entries have
        resolution 0 and pass).
      min_length / max_length: SEQRES length filters.
      max_single_residue_fraction: drop chains where one residue type exceeds this fraction
        (default ``data.train.max_single_residue_fraction``, AlphaFold: 0.8); None disables.
      chain_data_cache: optional OpenFold-style JSON ``{id: {"resolution", "seq", ...}}``
        used for filtering instead of parsing every mmCIF up front.
      ground_truth: add :func:`jaxfold.data.ground_truth.make_ground_truth`'s features
        (atom14 gt, frames, chi angles, pseudo-beta): None = when that module imports,
        True = required, False = never (raw atom37 ground truth only).
      seed: default seed of :meth:`sample`.
    """

    def __init__(
        self,
        mmcif_dir: PathLike,
        alignment_dir: PathLike,
        config: Mapping[str, Any],
        chain_list: PathLike | None = None,
        cluster_file: PathLike | None = None,
        template_mmcif_dir: PathLike | None = None,
        max_template_date: None | str | datetime.date = None,
        crop_size: int | None = None,
        *,
        max_msa_clusters: int | None = None,
        max_extra_msa: int | None = None,
        max_templates: int | None = None,
        num_recycle: int | None = None,
        min_resolution: float | None = None,
        max_resolution: None | float | str = "config",
        min_length: int | None = None,
        max_length: int | None = None,
        max_single_residue_fraction: None | float | str = "config",
        chain_data_cache: PathLike | None = None,
        ground_truth: bool | None = None,
        seed: int = 0,
    ):
        self.mmcif_dir = Path(mmcif_dir)
        self.alignment_dir = Path(alignment_dir)
        self.template_mmcif_dir = Path(template_mmcif_dir) if template_mmcif_dir else None
        self.max_template_date = max_template_date
        self.seed = int(seed)
        self.ground_truth = ground_truth
        for what, p in (("mmCIF folder", self.mmcif_dir), ("alignment folder", self.alignment_dir)):
            if not p.is_dir():
                raise DatasetError(f"{what} not found: {p}")

        if not isinstance(config, Mapping) or "data" not in config or "train" not in config["data"]:
            raise TypeError(
                "config must be a jaxfold config with 'data.common' and 'data.train' "
                "sections (jaxfold.config.model_config(...))"
            )
        common, train = dict(config["data"]["common"]), dict(config["data"]["train"])
        overrides = {
            "crop_size": crop_size,
            "max_msa_clusters": max_msa_clusters,
            "max_extra_msa": max_extra_msa,
            "max_templates": max_templates,
        }
        train.update({k: v for k, v in overrides.items() if v is not None})
        if num_recycle is not None:
            common["num_recycle"] = int(num_recycle)
        if max_resolution == "config":
            max_resolution = float(train["max_resolution"])
        if max_single_residue_fraction == "config":
            max_single_residue_fraction = float(train["max_single_residue_fraction"])
        self.settings = TrainSettings(
            crop_size=int(train["crop_size"]),
            max_msa_clusters=int(train["max_msa_clusters"]),
            max_extra_msa=int(train["max_extra_msa"]),
            max_templates=int(train["max_templates"]),
            subsample_templates=bool(train["subsample_templates"]),
            masked_msa_replace_fraction=float(train["masked_msa_replace_fraction"]),
            num_recycle=int(common["num_recycle"]),
            uniform_recycling=bool(train["uniform_recycling"]),
            use_templates=bool(common["use_templates"]),
            max_template_hits=int(train["max_template_hits"]),
            use_clamped_fape_probability=float(train["use_clamped_fape_probability"]),
        )
        s = self.settings
        if s.crop_size < 1 or s.max_msa_clusters < 1 or s.num_recycle < 0:
            raise DatasetError(f"invalid training settings {s}")
        if common["reduce_msa_clusters_by_max_templates"] and s.max_msa_clusters - s.max_templates < 1:
            raise DatasetError(
                f"data.train.max_msa_clusters ({s.max_msa_clusters}) leaves no MSA row after "
                f"reduce_msa_clusters_by_max_templates (max_templates={s.max_templates}); "
                "need at least 1 (the query)"
            )
        if not 0.0 <= s.use_clamped_fape_probability <= 1.0:
            raise DatasetError(
                f"data.train.use_clamped_fape_probability must be in [0, 1]; got {s.use_clamped_fape_probability}"
            )
        self._fp_config = training_feature_config(config, s)
        # One MSA sample per recycling iteration (AlphaFold's training pipeline has no ensembling).
        self._num_slices = s.num_recycle + 1 if common["resample_msa_in_recycling"] else 1

        # --- enumerate entries -------------------------------------------------------
        cifs = {p.name.split(".")[0].lower(): p for p in self.mmcif_dir.iterdir() if p.name.endswith(".cif")}
        aln = {}
        for p in self.alignment_dir.iterdir():
            if p.is_dir() and "_" in p.name:
                aln[_norm_id(p.name)] = p
        if chain_list is not None:
            wanted = [_norm_id(x.split()[0]) for x in _read_lines(chain_list)]
        else:
            wanted = sorted(aln)
        self.skipped: dict[str, str] = {}
        entries = []
        for cid in dict.fromkeys(wanted):
            pdb = cid.split("_")[0]
            problems = []
            if pdb not in cifs:
                problems.append(f"no mmCIF {self.mmcif_dir / (pdb + '.cif')}")
            if cid not in aln:
                problems.append(f"no alignment folder {self.alignment_dir / cid}")
            if problems:
                self.skipped[cid] = "; ".join(problems)
            else:
                entries.append(cid)
        if not entries:
            listing = "\n".join(f"  {k}: {v}" for k, v in list(self.skipped.items())[:50])
            raise DatasetError(
                f"no usable training chain: need both {self.mmcif_dir}/<pdb_id>.cif and "
                f"{self.alignment_dir}/<pdb_id>_<chain>/ for each chain"
                + (f" (chain list {chain_list})" if chain_list else "")
                + (
                    f"; missing:\n{listing}"
                    if listing
                    else f"; found {len(cifs)} mmCIF files and {len(aln)} alignment folders"
                )
            )
        self._cif_paths = {cid: str(cifs[cid.split("_")[0]]) for cid in entries}
        self._aln_paths = {cid: str(aln[cid]) for cid in entries}

        # --- metadata + filters ---------------------------------------------------------
        cache = json.loads(Path(chain_data_cache).read_text()) if chain_data_cache else {}
        cache = {_norm_id(k): v for k, v in cache.items()}
        self.metadata: dict[str, dict[str, Any]] = {}
        kept = []
        for cid in entries:
            meta = self._metadata(cid, cache.get(cid))
            self.metadata[cid] = meta
            why = self._filter_reason(
                meta, min_resolution, max_resolution, min_length, max_length, max_single_residue_fraction
            )
            if why:
                self.skipped[cid] = why
            else:
                kept.append(cid)
        if not kept:
            listing = "\n".join(f"  {k}: {v}" for k, v in self.skipped.items())
            raise DatasetError(f"every training chain was filtered out:\n{listing}")
        self.entries: list[str] = kept

        # --- clusters ---------------------------------------------------------------------
        self.clusters: list[list[str]] | None = None
        if cluster_file is not None:
            keep = set(kept)
            clusters = []
            for line in _read_lines(cluster_file):
                members = [_norm_id(x) for x in line.replace(",", " ").split()]
                members = [m for m in members if m in keep]
                if members:
                    clusters.append(sorted(set(members)))
            if not clusters:
                raise DatasetError(
                    f"cluster file {cluster_file}: no cluster holds a usable chain (usable: {', '.join(kept[:20])})"
                )
            self.clusters = clusters

    # ------------------------------------------------------------------------------------
    def _metadata(self, cid: str, cached: Mapping[str, Any] | None) -> dict[str, Any]:
        if cached and "seq" in cached and "resolution" in cached:
            return {
                "resolution": float(cached["resolution"]),
                "seq": cached["seq"],
                "release_date": cached.get("release_date"),
            }
        obj = self._mmcif(cid)
        chain = cid.split("_", 1)[1]
        if chain not in obj.chain_to_seqres:
            raise DatasetError(
                f"{cid}: chain {chain!r} is not a protein chain of "
                f"{self._cif_paths[cid]} (chains: {', '.join(obj.chain_to_seqres)})"
            )
        return {
            "resolution": float(obj.resolution),
            "seq": obj.chain_to_seqres[chain],
            "release_date": obj.release_date,
        }

    @staticmethod
    def _filter_reason(meta, min_res, max_res, min_len, max_len, max_frac) -> str | None:
        res, n = meta["resolution"], len(meta["seq"])
        if max_res is not None and res > max_res:
            return f"resolution {res} Å > {max_res} Å"
        if min_res is not None and res < min_res:
            return f"resolution {res} Å < {min_res} Å"
        if min_len is not None and n < min_len:
            return f"length {n} < {min_len}"
        if max_len is not None and n > max_len:
            return f"length {n} > {max_len}"
        if max_frac is not None and n:
            top = max(meta["seq"].count(c) for c in set(meta["seq"])) / n
            if top > max_frac:
                return f"one residue type makes {top:.0%} of the sequence (> {max_frac:.0%})"
        return None

    def _mmcif(self, cid: str):
        from jaxfold.data import mmcif  # noqa: PLC0415  (Biopython)

        return mmcif.parse_mmcif_file(self._cif_paths[cid])

    def __len__(self) -> int:
        return len(self.clusters) if self.clusters is not None else len(self.entries)

    def __repr__(self) -> str:
        return (
            f"TrainingDataset({len(self.entries)} chains"
            + (f", {len(self.clusters)} clusters" if self.clusters else "")
            + f", crop {self.settings.crop_size})"
        )

    @property
    def num_slices(self) -> int:
        return self._num_slices

    # ------------------------------------------------------------------------------------
    def chain_for(self, index: int, seed: int | None = None) -> str:
        """The chain id sample ``index`` uses: with clusters, a uniform cluster then a
        uniform member; else the ``index % len``-th chain of a per-epoch permutation."""
        seed = self.seed if seed is None else int(seed)
        index = int(index)
        if index < 0:
            raise IndexError(f"sample index must be >= 0; got {index}")
        if self.clusters is not None:
            rng = np.random.default_rng([seed, index, 1])
            cluster = self.clusters[int(rng.integers(len(self.clusters)))]
            return cluster[int(rng.integers(len(cluster)))]
        n = len(self.entries)
        epoch, pos = divmod(index, n)
        perm = np.random.default_rng([seed, epoch, 2]).permutation(n)
        return self.entries[int(perm[pos])]

    def raw_features(self, cid: str) -> dict[str, Any]:
        """AlphaFold raw features (sequence, MSA, templates) + raw ground truth of ``cid``."""
        from jaxfold.data import msa_features, msa_search, parsers  # noqa: PLC0415

        obj = self._mmcif(cid)
        pdb, chain = cid.split("_", 1)
        seq = obj.chain_to_seqres[chain]
        n = len(seq)
        record = parsers.parse_fasta(f">{cid}\n{seq}\n", source=cid)[0]
        raw: dict[str, Any] = dict(msa_features.make_sequence_features(seq, cid, n))
        msas = msa_search.load_precomputed_msas(record, self._aln_paths[cid])
        raw.update(msa_features.make_msa_features(msas))
        if raw["msa"].shape[1] != n:
            raise DatasetError(f"{cid}: alignments have {raw['msa'].shape[1]} columns, SEQRES has {n} residues")
        if self.settings.use_templates:
            raw.update(self._templates(cid, record, obj))
        positions, mask = obj.get_atom_positions(chain)
        raw["all_atom_positions"] = positions.astype(np.float32)
        raw["all_atom_mask"] = mask.astype(np.float32)
        raw["resolution"] = np.asarray(obj.resolution, np.float32)
        raw["release_date"] = obj.release_date
        return raw

    def _templates(self, cid, record, obj) -> dict[str, np.ndarray]:
        from jaxfold.data import pipeline, templates  # noqa: PLC0415

        n = len(record.sequence)
        tdir = self.template_mmcif_dir or self.mmcif_dir
        hits_path = pipeline.find_template_hits(record, self._aln_paths[cid])
        if hits_path is None:
            return dict(templates.empty_template_features(n))
        hits = pipeline.read_template_hits(hits_path, record.sequence)
        date = self.max_template_date or obj.release_date or datetime.date.today()
        featurizer = templates.TemplateFeaturizer(
            tdir, date, max_hits=self.settings.max_template_hits, kalign_binary=""
        )
        result = featurizer.get_templates(
            record.sequence, hits, query_pdb_code=cid.split("_")[0], query_release_date=obj.release_date
        )
        return dict(result.features if hasattr(result, "features") else result)

    # ------------------------------------------------------------------------------------
    def sample(self, index: int, seed: int | None = None) -> dict[str, np.ndarray]:
        """Training sample ``index``: a pure function of ``(index, seed)``.

        Returns ``{name: array}``: the processed features as
        :func:`feature_processing.process_features` names them, with a leading slice axis
        ``[num_recycle + 1, ...]`` (one MSA sample per recycling iteration), NUM_RES axes
        cropped and padded to ``crop_size``; ``num_iter_recycling`` int32 [num_slices];
        ground truth (no slice axis): ``all_atom_positions`` [C, 37, 3], ``all_atom_mask``
        [C, 37], ``resolution`` (), plus the ``make_ground_truth`` features when
        :mod:`jaxfold.data.ground_truth` exists; ``crop_start``, ``num_res`` (uncropped
        length), ``chain_index`` (into :attr:`entries`), ``sample_index``.
        """
        seed = self.seed if seed is None else int(seed)
        cid = self.chain_for(index, seed)
        try:
            return self._sample(cid, int(index), seed)
        except DatasetError:
            raise
        except Exception as e:  # name the chain
            raise DatasetError(f"sample {index} (chain {cid}, seed {seed}): {type(e).__name__}: {e}") from e

    def _sample(self, cid: str, index: int, seed: int) -> dict[str, np.ndarray]:
        s = self.settings
        raw = self.raw_features(cid)
        n = int(raw["seq_length"][0])
        ss = np.random.SeedSequence([seed, index, 3])
        nonens_ss, crop_ss, recycle_ss, *slice_ss = ss.spawn(3 + self.num_slices)

        feats = fp.nonensembled_features(raw, self._fp_config, nonens_ss)

        # Recycling: AlphaFold training samples num_iter_recycling ~ U{0..num_recycle};
        # the batch always holds num_recycle + 1 slices (fixed shapes).
        if s.uniform_recycling:
            num_iter = int(np.random.default_rng(recycle_ss).integers(0, s.num_recycle + 1))
        else:
            num_iter = s.num_recycle
        # Contiguous crop (AlphaFold random_crop_to_size, monomer).
        crop_len = min(n, s.crop_size)
        crop_start = int(np.random.default_rng(crop_ss).integers(0, n - crop_len + 1))

        slices = []
        for i in range(self.num_slices):
            if i > num_iter and slices:  # never used by the model: repeat the last one
                slices.append(slices[-1])
                continue
            rng = np.random.default_rng(slice_ss[i])
            sl = fp.ensembled_features(feats, self._fp_config, fp.sample_msa(feats, self._fp_config, rng))
            sl = crop_and_pad(sl, crop_start, crop_len, s.crop_size)
            sl["seq_length"] = np.asarray(crop_len, np.int32)
            slices.append(sl)
        out = {k: np.stack([sl[k] for sl in slices]) for k in slices[0]}
        out["num_iter_recycling"] = np.full([self.num_slices], num_iter, np.int32)
        out["use_clamped_fape"] = use_clamped_fape(seed, index, s.use_clamped_fape_probability)

        # Ground truth, cropped consistently.
        gt = {"all_atom_positions": raw["all_atom_positions"], "all_atom_mask": raw["all_atom_mask"]}
        gt = crop_and_pad(gt, crop_start, crop_len, s.crop_size)
        out.update(gt)
        out["resolution"] = np.asarray(raw["resolution"], np.float32)
        extra = self._ground_truth(
            feats["aatype"][crop_start : crop_start + crop_len],
            raw["all_atom_positions"][crop_start : crop_start + crop_len],
            raw["all_atom_mask"][crop_start : crop_start + crop_len],
            float(raw["resolution"]),
            crop_len,
        )
        for k, v in extra.items():
            out.setdefault(k, v)
        out["crop_start"] = np.asarray(crop_start, np.int32)
        out["num_res"] = np.asarray(n, np.int32)
        out["chain_index"] = np.asarray(self.entries.index(cid), np.int32)
        out["sample_index"] = np.asarray(index, np.int64)
        return out

    def _ground_truth(self, aatype, positions, mask, resolution, crop_len) -> dict[str, np.ndarray]:
        if self.ground_truth is False:
            return {}
        try:
            from jaxfold.data import ground_truth  # noqa: PLC0415
        except ImportError:
            if self.ground_truth:
                raise
            return {}
        # make_ground_truth is jit-compiled per input shape: padding its inputs to the crop size
        # first gives every sample of a worker the same shape (one compile per worker instead of one
        # per distinct chain length, ~0.8 s each on a CPU); the padded rows are zeroed afterwards,
        # exactly as padding the outputs would.
        size = self.settings.crop_size
        extra = size - crop_len
        if extra > 0:
            aatype = np.pad(aatype, (0, extra))
            positions = np.pad(positions, [(0, extra), (0, 0), (0, 0)])
            mask = np.pad(mask, [(0, extra), (0, 0)])
        gt = ground_truth.make_ground_truth(aatype, positions, mask, resolution=resolution)
        out = {}
        for k, v in gt.items():
            v = np.array(v)
            if extra > 0 and v.ndim >= 1 and v.shape[0] == size:
                v[crop_len:] = 0
            out[k] = v
        return out

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.sample(index, self.seed)
