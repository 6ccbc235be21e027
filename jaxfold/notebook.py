"""Notebook helpers: a prediction's 3D structure coloured by pLDDT, its PAE heat map and pLDDT plot.

    from jaxfold.notebook import show
    outputs = jaxfold.inference.predict(record, config, params)
    show(outputs)                       # 3D view (py3Dmol), PAE heat map, pLDDT plot, inline

Figures are drawn with matplotlib's object API (a ``Figure`` with its own Agg canvas): this module never
touches pyplot's global backend, so it cannot break a notebook's inline display. ``outputs`` is the flat
dict of :func:`jaxfold.inference.predict` / :func:`jaxfold.model.run_alphafold`; padded residues
(``features/seq_mask`` 0) are left out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.outputs import make_protein, to_pdb_string

__all__ = ["PLDDT_BANDS", "figure_png", "plddt_figure", "pae_figure", "pdb_string", "structure_view", "show"]

# AlphaFold DB's pLDDT colours: (lower bound, colour, label).
PLDDT_BANDS = (
    (90, "#0053D6", "very high (>90)"),
    (70, "#65CBF3", "confident (70-90)"),
    (50, "#FFDB13", "low (50-70)"),
    (0, "#FF7D45", "very low (<50)"),
)


def _mask(outputs: Mapping[str, Any]) -> np.ndarray:
    plddt = np.asarray(outputs["confidence/plddt"])
    return np.asarray(outputs.get("features/seq_mask", np.ones_like(plddt))) > 0.5


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plddt_figure(outputs: Mapping[str, Any], title: str = "predicted lDDT"):
    """pLDDT per residue over AlphaFold DB's confidence bands -> a matplotlib ``Figure``."""
    plddt = np.asarray(outputs["confidence/plddt"])[_mask(outputs)]
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    upper = 100
    for lower, colour, label in PLDDT_BANDS:
        ax.axhspan(lower, upper, color=colour, alpha=0.15, lw=0, label=label)
        upper = lower
    ax.plot(np.arange(1, len(plddt) + 1), plddt, color="black", lw=1.5)
    ax.set(
        xlabel="residue",
        ylabel="pLDDT",
        ylim=(0, 100),
        xlim=(1, max(len(plddt), 2)),
        title=f"{title} (mean {plddt.mean():.1f})",
    )
    ax.legend(loc="lower right", fontsize="x-small")
    fig.tight_layout()
    return fig


def pae_figure(outputs: Mapping[str, Any], title: str = "predicted aligned error"):
    """PAE heat map (row = aligned residue, column = scored residue), Å -> a ``Figure``.

    Raises ValueError for a model without the pTM head (no PAE).
    """
    if "confidence/predicted_aligned_error" not in outputs:
        raise ValueError("no PAE in these outputs: only the *_ptm models predict aligned errors")
    mask = _mask(outputs)
    pae = np.asarray(outputs["confidence/predicted_aligned_error"])[np.ix_(mask, mask)]
    vmax = float(outputs.get("confidence/max_predicted_aligned_error", pae.max()))
    fig = _figure(4.6, 4)
    ax = fig.add_subplot()
    image = ax.imshow(pae, cmap="Greens_r", vmin=0, vmax=vmax, extent=(0.5, len(pae) + 0.5, len(pae) + 0.5, 0.5))
    fig.colorbar(image, ax=ax, label="expected position error (Å)")
    ax.set(xlabel="scored residue", ylabel="aligned residue", title=title)
    fig.tight_layout()
    return fig


def pdb_string(outputs: Mapping[str, Any], model_name: str = "jaxfold", random_params: bool = False) -> str:
    """The prediction as PDB text, pLDDT in the B-factor column (``outputs.to_pdb_string``)."""

    return to_pdb_string(make_protein(outputs), model_name, outputs, random_params)


def structure_view(structure: Mapping[str, Any] | str, width: int = 600, height: int = 450):
    """A py3Dmol view of a prediction (outputs dict or PDB text) as a cartoon coloured by pLDDT.

    The B-factor column (pLDDT) is coloured red (50 and below) through yellow and green to blue (90 and
    above), ColabFold's convention. Needs ``py3Dmol`` (``pip install "jaxfold[notebook]"``).
    """
    try:
        import py3Dmol  # noqa: PLC0415
    except ImportError:
        raise ImportError('the 3D view needs py3Dmol: pip install "jaxfold[notebook]"') from None
    text = structure if isinstance(structure, str) else pdb_string(structure)
    view = py3Dmol.view(width=width, height=height)
    view.addModel(text, "pdb")
    view.setStyle({"cartoon": {"colorscheme": {"prop": "b", "gradient": "roygb", "min": 50, "max": 90}}})
    view.zoomTo()
    return view


def show(
    outputs: Mapping[str, Any], *, structure: str | None = None, view: bool = True, display: bool = True
) -> dict[str, Any]:
    """Shows a prediction inline: the 3D view (if py3Dmol is installed), the PAE heat map (pTM models) and
    the pLDDT plot. ``structure``: PDB text to view instead of the prediction (e.g. a relaxed one).

    Returns ``{"view": ..., "pae": Figure | None, "plddt": Figure}``; with ``display=False`` nothing is
    displayed (for scripts and tests).
    """
    shown: dict[str, Any] = {"view": None, "pae": None, "plddt": plddt_figure(outputs)}
    if "confidence/predicted_aligned_error" in outputs:
        shown["pae"] = pae_figure(outputs)
    if view:
        try:
            shown["view"] = structure_view(structure if structure is not None else outputs)
        except ImportError as e:
            print(f"(no 3D view: {e})")
    if display:
        from IPython.display import Image  # noqa: PLC0415
        from IPython.display import display as ipy_display  # noqa: PLC0415

        if shown["view"] is not None:
            shown["view"].show()
        for key in ("pae", "plddt"):
            if shown[key] is not None:
                # PNG bytes, not the Figure: displays the same whatever matplotlib backend the kernel has.
                ipy_display(Image(data=figure_png(shown[key])))
    return shown


def figure_png(fig) -> bytes:
    """PNG bytes of a ``Figure`` made here (through its own Agg canvas)."""

    buffer = io.BytesIO()
    fig.canvas.print_png(buffer)
    return buffer.getvalue()
