"""The one place that imports OpenMM and PDBFixer (the optional ``relax`` extra)."""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "require_openmm"]

INSTALL_HINT = 'Amber relaxation needs OpenMM and PDBFixer: pip install "jaxfold[relax]"'


def require_openmm():
    """``(openmm, openmm.app, openmm.unit, pdbfixer)``, or a one-line ImportError saying how to install."""
    try:
        import openmm  # noqa: PLC0415
        import pdbfixer  # noqa: PLC0415
        from openmm import app, unit  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return openmm, app, unit, pdbfixer
