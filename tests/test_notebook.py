"""jaxfold.notebook helpers and examples/quickstart.ipynb executed top to bottom (nbclient + ipykernel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from jaxfold import notebook

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reference_outputs(shared_dir):
    """DeepMind's outputs on the reference features (ubiquitin 1-37), with the features the writers need."""
    with np.load(shared_dir / "reference/outputs.npz") as out, np.load(shared_dir / "reference/features.npz") as f:
        outputs = {k: out[k] for k in out.files if not k.startswith("captured/")}
        outputs.update({f"features/{k}": f[k][0] for k in ("aatype", "residue_index", "seq_mask")})
    return outputs


def test_figures_and_structure(reference_outputs):
    import matplotlib

    backend = matplotlib.get_backend()
    plddt = notebook.plddt_figure(reference_outputs)
    pae = notebook.pae_figure(reference_outputs)
    assert matplotlib.get_backend() == backend  # the object API never switches pyplot's backend
    assert notebook.figure_png(plddt).startswith(PNG) and notebook.figure_png(pae).startswith(PNG)
    line = plddt.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), reference_outputs["confidence/plddt"])
    image = pae.axes[0].images[0].get_array()
    assert image.shape == (37, 37)
    np.testing.assert_allclose(image, reference_outputs["confidence/predicted_aligned_error"])

    pdb = notebook.pdb_string(reference_outputs, model_name="model_1_ptm")
    ca = [ln for ln in pdb.splitlines() if ln.startswith("ATOM") and ln[12:16] == " CA "]
    assert len(ca) == 37
    np.testing.assert_allclose([float(ln[60:66]) for ln in ca], reference_outputs["confidence/plddt"], atol=0.01)

    no_pae = {k: v for k, v in reference_outputs.items() if "aligned_error" not in k}
    with pytest.raises(ValueError, match="only the \\*_ptm models"):
        notebook.pae_figure(no_pae)
    shown = notebook.show(no_pae, view=False, display=False)
    assert shown["pae"] is None and shown["plddt"] is not None


def test_structure_view(reference_outputs):
    pytest.importorskip("py3Dmol")
    view = notebook.structure_view(reference_outputs)
    html = view._make_html()  # the HTML+JS py3Dmol displays
    assert html.count(".addModel(") == 1 and html.count(" CA ") == 37
    assert '"colorscheme": {"prop": "b", "gradient": "roygb", "min": 50, "max": 90}' in html


@pytest.mark.timeout(300)
def test_quickstart_notebook_executes(monkeypatch):
    """The notebook, top to bottom, tiny preset with random parameters, on CPU: every cell runs, the show
    cell displays the 3D view and two PNG figures."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("py3Dmol")

    monkeypatch.setenv("JAXFOLD_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("JAXFOLD_PARAMS", "random")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    nb = nbformat.read(REPO / "examples/quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(REPO / "examples")}}
    )
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "RANDOM PARAMETERS - NOT A PREDICTION" in text and "mean pLDDT" in text
    show_cell = next(c for c in code if "show(outputs)" in c.source)
    pngs = [o for o in show_cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2
    html = "".join(o.get("data", {}).get("text/html", "") for o in show_cell.outputs)
    assert "3Dmol" in html
