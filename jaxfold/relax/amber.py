"""Restrained energy minimisation with OpenMM and Amber99SB (AlphaFold's ``_openmm_minimize``).

Force field ``amber99sb.xml``, no cutoff, bonds to hydrogen constrained, heavy atoms held to their
starting positions by harmonic restraints ``0.5 k |x - x0|^2`` (AlphaFold: k = 10 kcal/mol/Å²), then
L-BFGS until the gradient tolerance is met. Unlike AlphaFold (unbounded ``max_iterations=0``), the
minimiser always has an iteration cap and a wall-clock deadline, so no input can hang it.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterable

import numpy as np

from jaxfold.relax._openmm import require_openmm

__all__ = ["Minimised", "minimise", "openmm_platform", "DEVICES"]

# --relax-device values -> OpenMM platform names.
DEVICES = {"cpu": "CPU", "cuda": "CUDA"}


@dataclasses.dataclass(frozen=True)
class Minimised:
    """One minimisation: the PDB text (with hydrogens), energies in kcal/mol, how it stopped."""

    pdb_string: str
    energy_initial: float
    energy_final: float
    iterations: int
    timed_out: bool


def openmm_platform(device: str):
    """The OpenMM platform for ``device`` ('cpu' or 'cuda'); a ValueError names what is available."""
    openmm, *_ = require_openmm()
    if device not in DEVICES:
        raise ValueError(f"relax device must be one of {sorted(DEVICES)}, got {device!r}")
    try:
        return openmm.Platform.getPlatformByName(DEVICES[device])
    except Exception:  # noqa: BLE001 - OpenMMException: platform not built or no driver
        available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        raise ValueError(
            f"relax device {device!r}: OpenMM has no {DEVICES[device]} platform here "
            f"(available: {', '.join(available)}); use --relax-device cpu"
        ) from None


def _restraint_force(openmm, unit, topology, positions, stiffness: float, exclude: Iterable[int]):
    """Harmonic restraints on every heavy atom outside the residues (0-based positions) in ``exclude``."""
    force = openmm.CustomExternalForce("0.5 * k * ((x-x0)^2 + (y-y0)^2 + (z-z0)^2)")
    k = (stiffness * unit.kilocalories_per_mole / unit.angstroms**2).value_in_unit(
        unit.kilojoules_per_mole / unit.nanometers**2
    )
    force.addGlobalParameter("k", k)
    for p in ("x0", "y0", "z0"):
        force.addPerParticleParameter(p)
    exclude = set(exclude)
    count = 0
    for i, atom in enumerate(topology.atoms()):
        if atom.residue.index in exclude or atom.element is None or atom.element.symbol == "H":
            continue
        force.addParticle(i, positions[i].value_in_unit(unit.nanometers))
        count += 1
    return force, count


def minimise(
    topology,
    positions,
    *,
    stiffness: float,
    tolerance: float,
    max_iterations: int,
    deadline: float,
    exclude_residues: Iterable[int] = (),
    device: str = "cpu",
    threads: int | None = None,
) -> Minimised:
    """Minimises the Amber99SB energy plus heavy-atom restraints.

    Args:
      topology, positions: OpenMM topology and positions, hydrogens included (``cleanup.add_hydrogens``).
      stiffness: restraint constant in kcal/mol/Å² (0 = unrestrained).
      tolerance: AlphaFold's 2.39 kcal/mol. OpenMM >= 8 reads the tolerance as a force (kJ/mol/nm);
        OpenMM 7, which AlphaFold pins, read it as an energy in kJ/mol. The same number is passed
        (2.39 kcal/mol = 10 kJ/mol, OpenMM's own default), so the stopping rule matches AlphaFold's.
      max_iterations: L-BFGS iteration cap (> 0).
      deadline: ``time.monotonic()`` value after which the minimiser stops where it is.
      exclude_residues: 0-based residue positions left unrestrained (AlphaFold frees residues that
        still violate after a round).
      device: 'cpu' or 'cuda'.
      threads: CPU platform threads (None: OpenMM's default, all cores).
    """
    openmm, app, unit, _ = require_openmm()
    if max_iterations <= 0:
        raise ValueError(f"max_iterations must be positive (bounded minimisation), got {max_iterations}")
    forcefield = app.ForceField("amber99sb.xml")
    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    if stiffness > 0:
        force, _ = _restraint_force(openmm, unit, topology, positions, stiffness, exclude_residues)
        system.addForce(force)
    # The integrator is never stepped; a Context needs one.
    integrator = openmm.LangevinIntegrator(0, 0.01, 0.0)
    platform = openmm_platform(device)
    properties = {"Threads": str(int(threads))} if threads and device == "cpu" else {}
    simulation = app.Simulation(topology, system, integrator, platform, properties)
    simulation.context.setPositions(positions)
    kcal = unit.kilocalories_per_mole
    e0 = simulation.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(kcal)

    class _Stop(openmm.MinimizationReporter):
        """Counts iterations; stops the minimiser at the deadline."""

        def __init__(self):
            super().__init__()
            self.iterations = 0
            self.timed_out = False

        def report(self, iteration, x, grad, args):  # noqa: ARG002 - OpenMM's signature
            # Counted per call: `iteration` is per L-BFGS run, and OpenMM may run several in one call.
            self.iterations += 1
            if time.monotonic() > deadline:
                self.timed_out = True
                return True
            return False

    stop = _Stop()
    tol = (tolerance * kcal).value_in_unit(unit.kilojoules_per_mole)
    simulation.minimizeEnergy(
        tolerance=tol * unit.kilojoules_per_mole / unit.nanometer, maxIterations=int(max_iterations), reporter=stop
    )
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    e1 = state.getPotentialEnergy().value_in_unit(kcal)
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstroms)
    if not (np.isfinite(e1) and np.all(np.isfinite(pos))):
        raise FloatingPointError(f"minimisation produced a non-finite energy or coordinates (energy {e1})")
    out = io.StringIO()
    app.PDBFile.writeFile(simulation.topology, state.getPositions(), out, keepIds=True)
    return Minimised(out.getvalue(), float(e0), float(e1), stop.iterations, stop.timed_out)
