"""Writing a prediction: structures (PDB, mmCIF, pLDDT as B-factors), PAE json (AlphaFold DB layout),
pLDDT/PAE plots, `timings.json` and, last, `ranking.json` (the marker of a finished prediction).

Every file is written atomically (`jaxfold.common.files.atomic_write`): a crash never leaves half a file and
never removes an earlier one. Plots use matplotlib's object API (a Figure with its own Agg canvas), so the
process's matplotlib backend is left alone (notebooks keep theirs).
"""

from __future__ import annotations

import io
import json
import re
import textwrap
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common.files import PathLike, atomic_write
from jaxfold.data.feature_processing import is_processed
from jaxfold.data.parsers import FastaRecord
from jaxfold.errors import OutputExistsError

RANDOM_PARAMS_LABEL = "RANDOM PARAMETERS \u2014 NOT A PREDICTION"
# PDB and mmCIF files are ASCII: the same words with a plain hyphen.
RANDOM_PARAMS_LABEL_ASCII = "RANDOM PARAMETERS - NOT A PREDICTION"
FINISHED_MARKER = "ranking.json"


def _json(obj: Any, **kwargs) -> str:
    return json.dumps(obj, **kwargs) + "\n"


def sequence_output_dir(output_dir: PathLike, record_or_name: FastaRecord | str) -> Path:
    name = record_or_name.safe_name if isinstance(record_or_name, FastaRecord) else record_or_name
    return Path(output_dir) / name


def check_not_finished(seq_dir: PathLike, overwrite: bool = False) -> None:
    """Raises :class:`OutputExistsError` if ``seq_dir`` holds a finished prediction."""
    marker = Path(seq_dir) / FINISHED_MARKER
    if marker.exists() and not overwrite:
        raise OutputExistsError(
            f"a finished prediction is already in {seq_dir} ({FINISHED_MARKER} "
            "exists): pass --overwrite to replace it, or choose another "
            "--output-dir"
        )


def make_protein(
    outputs: Mapping[str, np.ndarray], features: Mapping[str, Any] | None = None, chain_ids: Sequence[str] | None = None
):
    """The predicted :class:`jaxfold.common.protein.Protein` (pLDDT as B-factors; residues
    numbered from 1, as AlphaFold writes them). Padded residues are dropped.

    Complexes: ``outputs['features/chain_index']`` ``[N_res]`` (0, 1, ... per residue) splits the
    residues into chains named ``chain_ids`` (default ``A``, ``B``, ...); ``residue_index`` then
    restarts per chain. Without it, one chain ``A``."""
    from jaxfold.common import protein  # noqa: PLC0415

    processed = features is not None and is_processed(features)

    def feature(key):
        if f"features/{key}" in outputs:
            return np.asarray(outputs[f"features/{key}"])
        if features is None or key not in features:
            raise KeyError(f"{key} is needed to write a structure (pass the features)")
        value = np.asarray(features[key])
        if processed:  # leading recycling axis
            return value[0]
        if key == "aatype" and value.ndim == 2:  # raw one-hot [N, 21]
            return value.argmax(-1)
        return value

    aatype = feature("aatype")
    residue_index = feature("residue_index")
    try:
        seq_mask = feature("seq_mask") > 0.5
    except KeyError:
        seq_mask = np.ones(aatype.shape, bool)
    n = int(seq_mask.sum())
    plddt = np.asarray(outputs["confidence/plddt"])
    chain_index = outputs.get("features/chain_index")
    return protein.from_prediction(
        aatype=aatype[:n],
        final_atom_positions=outputs["structure_module/final_atom_positions"][:n],
        final_atom_mask=outputs["structure_module/final_atom_mask"][:n],
        residue_index=residue_index[:n] + 1,
        plddt=plddt[:n],
        chain_index=None if chain_index is None else np.asarray(chain_index)[:n],
        chain_ids=chain_ids,
    )


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("jaxfold")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "dev"


def _remarks(model_name: str, random_params: bool, outputs: Mapping[str, np.ndarray]) -> list[str]:
    lines = []
    if random_params:
        lines.append(RANDOM_PARAMS_LABEL_ASCII)
    lines.append(
        f"jaxfold {_version()} AlphaFold2 prediction, model {model_name}"
        + (" (random parameters)" if random_params else "")
    )
    lines.append("B-factor column: per-residue pLDDT (0-100)")
    lines.append(
        f"mean pLDDT {float(np.mean(outputs['confidence/plddt'])):.2f}"
        + (f", pTM {float(outputs['confidence/ptm']):.4f}" if "confidence/ptm" in outputs else "")
        + (f", ipTM {float(outputs['confidence/iptm']):.4f}" if "confidence/iptm" in outputs else "")
    )
    return lines


def to_pdb_string(prot, model_name: str, outputs: Mapping[str, np.ndarray], random_params: bool = False) -> str:
    """PDB text with ``REMARK 1`` lines naming the model (and random parameters)."""
    from jaxfold.common import protein  # noqa: PLC0415

    body = protein.to_pdb(prot)
    lines = [
        part for line in _remarks(model_name, random_params, outputs) for part in textwrap.wrap(line, 69)
    ]  # PDB lines are 80 columns: wrap, never cut words
    remarks = "".join(f"REMARK   1 {line}\n" for line in lines)
    return remarks + body


def to_mmcif_string(
    prot, name: str, model_name: str, outputs: Mapping[str, np.ndarray], random_params: bool = False
) -> str:
    """mmCIF text with a ``_struct.title`` (and comments) naming the model."""
    from jaxfold.common import protein  # noqa: PLC0415

    text = protein.to_mmcif(prot, name=name)
    lines = text.split("\n")
    remarks = _remarks(model_name, random_params, outputs)
    title = remarks[0] if random_params else remarks[0]
    title = title.replace("'", "")
    block = re.sub(r"\s+", "_", str(name).strip())
    insert = [f"# {line}" for line in remarks] + [f"_struct.entry_id {block}", f"_struct.title '{title}'", "#"]
    return "\n".join(lines[:2] + insert + lines[2:])


def pae_json(pae: np.ndarray, max_pae: float, extra: Mapping[str, Any] | None = None) -> str:
    """The PAE in the AlphaFold DB layout (AlphaFold's ``confidence.pae_json``): errors rounded
    to 1 decimal, ``[{"predicted_aligned_error": [[...]], "max_predicted_aligned_error": x}]``.
    ``extra`` keys (e.g. a warning) are added to the one object."""
    rounded = np.round(np.asarray(pae, np.float64), decimals=1)
    entry = {"predicted_aligned_error": rounded.tolist(), "max_predicted_aligned_error": float(max_pae)}
    entry.update(extra or {})
    return json.dumps([entry], indent=None, separators=(",", ":"))


def model_file_names(name: str, model_name: str) -> dict[str, str]:
    return {
        "pdb": f"{name}_unrelaxed_{model_name}.pdb",
        "cif": f"{name}_unrelaxed_{model_name}.cif",
        "pae": f"{name}_pae_{model_name}.json",
    }


def write_model_outputs(
    seq_dir: PathLike,
    name: str,
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    features: Mapping[str, Any] | None = None,
    *,
    random_params: bool = False,
    chain_ids: Sequence[str] | None = None,
) -> list[Path]:
    """Writes ``<name>_unrelaxed_<model>.pdb`` / ``.cif`` and (pTM models)
    ``<name>_pae_<model>.json`` into ``seq_dir``; returns the paths. ``chain_ids``: see
    :func:`make_protein` (complexes)."""
    seq_dir = Path(seq_dir)
    files = model_file_names(name, model_name)
    prot = make_protein(outputs, features, chain_ids)
    written = [
        atomic_write(seq_dir / files["pdb"], to_pdb_string(prot, model_name, outputs, random_params)),
        atomic_write(
            seq_dir / files["cif"], to_mmcif_string(prot, f"{name}_{model_name}", model_name, outputs, random_params)
        ),
    ]
    if "confidence/predicted_aligned_error" in outputs:
        n = prot.num_res
        pae = np.asarray(outputs["confidence/predicted_aligned_error"])[:n, :n]
        extra = {"warning": RANDOM_PARAMS_LABEL} if random_params else None
        written.append(
            atomic_write(
                seq_dir / files["pae"], pae_json(pae, float(outputs["confidence/max_predicted_aligned_error"]), extra)
            )
        )
    return written


def ranking_summary(results: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """AlphaFold's ``ranking_debug.json`` content, plus pTM (and ipTM) where present.

    ``plddts``: model -> ranking confidence (mean pLDDT for monomer models, as AlphaFold);
    multimer models (outputs with ``confidence/iptm``) have ``iptm+ptm`` instead, as
    AlphaFold-Multimer's file: model -> ``0.8 ipTM + 0.2 pTM``, and ``iptm``: model -> ipTM.
    ``ptm``: model -> pTM (pTM models only); ``order``: models by decreasing ranking
    confidence.
    """
    confidences = {m: float(o["confidence/ranking_confidence"]) for m, o in results.items()}
    order = [m for m, _ in sorted(confidences.items(), key=lambda kv: kv[1], reverse=True)]
    multimer = bool(results) and all("confidence/iptm" in o for o in results.values())
    summary: dict[str, Any] = {"iptm+ptm" if multimer else "plddts": confidences}
    if multimer:
        summary["iptm"] = {m: float(o["confidence/iptm"]) for m, o in results.items()}
    ptms = {m: float(o["confidence/ptm"]) for m, o in results.items() if "confidence/ptm" in o}
    if ptms:
        summary["ptm"] = ptms
    summary["order"] = order
    return summary


def _figure_class():
    """matplotlib's `Figure` (drawn on its own Agg canvas when saved; no pyplot, no backend switch), or
    None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415  (optional: plots are skipped without it)
    except ImportError:
        return None
    return Figure


def _save_figure(fig, set_title: Callable[..., Any], path: Path, title: str, random_params: bool) -> Path:
    """Titles `fig` through `set_title` (its axes' `set_title` or its `suptitle`), in red under the
    random-parameters warning when `random_params`, lays it out and writes it to `path` as PNG with the title
    (and the warning) in the file's metadata."""
    shown = f"{RANDOM_PARAMS_LABEL}\n{title}" if random_params else title
    set_title(shown, color="red" if random_params else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    metadata = {"Title": title, "Software": f"jaxfold {_version()}"}
    if random_params:
        metadata["Description"] = RANDOM_PARAMS_LABEL_ASCII  # PNG text chunks are Latin-1
    fig.savefig(buffer, format="png", dpi=100, metadata=metadata)
    return atomic_write(path, buffer.getvalue())


def plot_plddt(
    path: PathLike,
    name: str,
    results: Mapping[str, Mapping[str, np.ndarray]],
    order: Sequence[str],
    random_params: bool = False,
) -> Path | None:
    """pLDDT per residue, one line per model (ranked); None when matplotlib is absent."""
    figure = _figure_class()
    if figure is None:
        return None
    fig = figure(figsize=(8, 4))
    ax = fig.subplots()
    for band, color in ((90, "#0053D6"), (70, "#65CBF3"), (50, "#FFDB13"), (0, "#FF7D45")):
        ax.axhspan(band, 100 if band == 90 else {70: 90, 50: 70, 0: 50}[band], color=color, alpha=0.12, lw=0)
    for rank, model in enumerate(order):
        plddt = np.asarray(results[model]["confidence/plddt"])
        mask = np.asarray(results[model].get("features/seq_mask", np.ones_like(plddt))) > 0.5
        plddt = plddt[mask]
        ax.plot(np.arange(1, len(plddt) + 1), plddt, label=f"rank {rank + 1}: {model} ({plddt.mean():.1f})")
    ax.set_xlabel("residue")
    ax.set_ylabel("pLDDT")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize="small")
    return _save_figure(fig, ax.set_title, Path(path), f"{name}: predicted lDDT", random_params)


def plot_pae(
    path: PathLike,
    name: str,
    results: Mapping[str, Mapping[str, np.ndarray]],
    order: Sequence[str],
    random_params: bool = False,
) -> Path | None:
    """Predicted aligned error heat maps of the pTM models (ranked); None when there is none
    or matplotlib is absent."""
    models = [m for m in order if "confidence/predicted_aligned_error" in results[m]]
    if not models:
        return None
    figure = _figure_class()
    if figure is None:
        return None
    fig = figure(figsize=(4.2 * len(models), 4.2 + 0.3 * random_params))
    axes = fig.subplots(1, len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        out = results[model]
        n = int((np.asarray(out.get("features/seq_mask", np.ones(out["confidence/plddt"].shape))) > 0.5).sum())
        pae = np.asarray(out["confidence/predicted_aligned_error"])[:n, :n]
        image = ax.imshow(
            pae,
            cmap="Greens_r",
            vmin=0,
            vmax=float(out["confidence/max_predicted_aligned_error"]),
            extent=(0.5, n + 0.5, n + 0.5, 0.5),
        )
        ax.set_title(
            f"{model}" + (f" (pTM {float(out['confidence/ptm']):.2f})" if "confidence/ptm" in out else ""),
            fontsize="medium",
        )
        ax.set_xlabel("scored residue")
        ax.set_ylabel("aligned residue")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="expected error (\u00c5)")
    return _save_figure(fig, fig.suptitle, Path(path), f"{name}: predicted aligned error", random_params)


def write_sequence_summary(
    seq_dir: PathLike,
    name: str,
    results: Mapping[str, Mapping[str, np.ndarray]],
    timings: Mapping[str, float],
    *,
    random_params: bool = False,
    plots: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Plots, ``timings.json`` and, last, ``ranking.json`` (the finished-prediction marker)."""
    seq_dir = Path(seq_dir)
    summary = ranking_summary(results)
    written = []
    if plots:
        if _figure_class() is None:
            message = "matplotlib is not installed: the pLDDT / PAE plots are skipped (pip install matplotlib)"
            warnings.warn(message, RuntimeWarning, stacklevel=2)  # shown once per place
        else:
            for path in (
                plot_plddt(seq_dir / f"{name}_plddt.png", name, results, summary["order"], random_params),
                plot_pae(seq_dir / f"{name}_pae.png", name, results, summary["order"], random_params),
            ):
                if path is not None:
                    written.append(path)
    label = {"warning": RANDOM_PARAMS_LABEL} if random_params else {}
    written.append(
        atomic_write(
            seq_dir / "timings.json", _json({**label, **{k: round(float(v), 4) for k, v in timings.items()}}, indent=4)
        )
    )
    written.append(atomic_write(seq_dir / FINISHED_MARKER, _json({**label, **summary, **dict(extra or {})}, indent=4)))
    return written


RELAX_MODES = ("none", "best", "all")


def relax_models(
    seq_dir: PathLike,
    name: str,
    results: Mapping[str, Mapping[str, np.ndarray]],
    order: Sequence[str],
    mode: str,
    device: str = "cpu",
    random_params: bool = False,
    chain_ids: Sequence[str] | None = None,
    log=lambda text: None,
) -> tuple[list[Path], dict, dict]:
    """Amber-relaxes the best (``mode='best'``) or every (``'all'``) model and writes
    ``<name>_relaxed_<model>.pdb`` / ``.cif`` (pLDDT B-factors kept).

    Returns ``(files, stats, seconds)``: per relaxed model the relaxation's numbers (violations and clashes
    before and after, heavy-atom RMSD, energies, time) or ``{'skipped': reason}`` for a structure that
    cannot be relaxed (non-standard residues, missing backbone atoms, chain breaks): reported, never fatal.
    """
    if mode not in RELAX_MODES:
        raise ValueError(f"relax mode must be one of {RELAX_MODES}, got {mode!r}")
    from jaxfold.relax import RelaxError, RelaxInputError, relax_structure  # noqa: PLC0415  (optional OpenMM)

    models = {"none": [], "best": list(order[:1]), "all": list(order)}[mode]
    seq_dir = Path(seq_dir)
    files: list[Path] = []
    stats: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for model in models:
        outputs = results[model]
        prot = make_protein(outputs, chain_ids=chain_ids)
        try:
            result = relax_structure(to_pdb_string(prot, model, outputs, random_params), device=device)
        except (RelaxInputError, RelaxError) as e:
            stats[model] = {"skipped": str(e)}
            log(f"{name} {model}: relaxation skipped: {e}")
            continue
        except Exception as e:  # noqa: BLE001  (OpenMM on a strange structure: the unrelaxed files stand)
            first_line = str(e).splitlines()[0][:200] if str(e) else ""
            reason = f"{type(e).__name__}: {first_line}"
            stats[model] = {"skipped": f"relaxation failed ({reason})"}
            log(f"{name} {model}: relaxation failed, the unrelaxed structure is kept: {reason}")
            continue
        files.append(atomic_write(seq_dir / f"{name}_relaxed_{model}.pdb", result.pdb_string))
        files.append(
            atomic_write(
                seq_dir / f"{name}_relaxed_{model}.cif",
                to_mmcif_string(result.protein, name, model, outputs, random_params),
            )
        )
        stats[model] = result.stats
        seconds[model] = float(result.stats.get("time_s", 0.0))
        log(
            f"{name} {model}: relaxed in {seconds[model]:.1f} s, violations "
            f"{result.stats.get('violating_residues_before')} -> {result.stats.get('violating_residues_after')}, "
            f"heavy-atom RMSD {result.stats.get('rmsd', float('nan')):.2f} A"
        )
    return files, stats, seconds
