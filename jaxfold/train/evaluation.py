"""Evaluation during training: lDDT-Cα of the EMA parameters on a held-out set, in a background thread.

    evaluator = Evaluator(config, eval_examples, mesh=mesh)   # examples: feature dicts with ground truth
    evaluator.submit(step, state.ema_params)                  # copies the EMA on device, returns at once
    for step, metrics in evaluator.poll(): log(metrics)       # finished evaluations
    evaluator.close()                                         # waits for the running one

An example is one chain's features with the leading recycling axis (as the model takes them) plus its
ground truth `all_atom_positions` `[N, 37, 3]` and `all_atom_mask` `[N, 37]` (a leading recycling axis on
those is accepted and ignored). The prediction runs the model in inference mode
(`jaxfold.model.predict.predict`, the one prediction path: no dropout, `model.num_recycle` recycles) unless
`predict_fn` is given.
A submission while an evaluation is still running is dropped (training never waits); `poll` reports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.metrics import lddt_ca

__all__ = ["Evaluator", "evaluate_lddt_ca", "model_predict_fn"]

# (params, features with recycling axis) -> atom37 positions [N, 37, 3]
PredictFn = Callable[[Any, Mapping[str, Any]], Any]

_MODEL_KEYS_EXCLUDED = ("all_atom_positions", "all_atom_mask", "resolution")


def model_predict_fn(config, mesh=None) -> PredictFn:
    """Predictions through the one prediction path (`jaxfold.model.predict.predict`, lean outputs)."""
    from jaxfold.model.predict import predict as run_model  # noqa: PLC0415
    from jaxfold.train.step import split_example  # noqa: PLC0415

    def predict(params, features):
        sliced, _ = split_example({k: np.asarray(v) for k, v in features.items() if np.asarray(v).dtype.kind in "biuf"})
        batch = {k: v for k, v in sliced.items() if k not in _MODEL_KEYS_EXCLUDED}
        return run_model(config, params, batch, mesh=mesh, outputs="lean")["structure_module/final_atom_positions"]

    return predict


def _truth(example: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(example["all_atom_positions"], np.float32)
    mask = np.asarray(example["all_atom_mask"], np.float32)
    if pos.ndim == 4:
        pos = pos[0]
    if mask.ndim == 3:
        mask = mask[0]
    if "seq_mask" in example:  # padding residues do not count
        seq_mask = np.asarray(example["seq_mask"], np.float32)
        mask = mask * (seq_mask[0] if seq_mask.ndim == 2 else seq_mask)[:, None]
    return pos, mask


def evaluate_lddt_ca(predict_fn: PredictFn, params: Any, examples: Iterable[Mapping[str, Any]]) -> dict:
    """`{'lddt_ca': mean over chains, 'lddt_ca_min', 'num_chains'}` (chain names under `per_chain` if the
    examples carry a `name`/`domain_name`)."""
    scores, names = [], []
    for i, ex in enumerate(examples):
        pred = np.asarray(predict_fn(params, ex), np.float32)
        pos, mask = _truth(ex)
        scores.append(float(lddt_ca(pred, pos, mask)))
        names.append(str(ex.get("name", i)))
    if not scores:
        return {"num_chains": 0}
    return {
        "lddt_ca": float(np.mean(scores)),
        "lddt_ca_min": float(np.min(scores)),
        "num_chains": len(scores),
        "per_chain": dict(zip(names, scores)),
    }


class Evaluator:
    """Background lDDT-Cα evaluations of parameter snapshots (see the module docstring)."""

    def __init__(
        self,
        config,
        examples: Iterable[Mapping[str, Any]] | Callable[[], Iterable],
        *,
        mesh=None,
        predict_fn: PredictFn | None = None,
    ):
        self._examples = examples
        self._predict = predict_fn if predict_fn is not None else model_predict_fn(config, mesh)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._results: list[tuple[int, dict]] = []

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, step: int, params: Any) -> bool:
        """Start evaluating `params` (copied, so the caller may donate them) in the background; returns
        False (and records a skip) if the previous evaluation is still running."""
        if self.busy:
            with self._lock:
                self._results.append((int(step), {"skipped_busy": 1}))
            return False
        snapshot = jax.tree_util.tree_map(jnp.copy, params)
        self._thread = threading.Thread(
            target=self._run, args=(int(step), snapshot), name=f"jaxfold-eval-{step}", daemon=True
        )
        self._thread.start()
        return True

    def _run(self, step: int, params: Any) -> None:
        try:
            examples = self._examples() if callable(self._examples) else self._examples
            metrics = evaluate_lddt_ca(self._predict, params, examples)
        except Exception as e:  # noqa: BLE001  (reported through poll, never kills training)
            metrics = {"error": f"{type(e).__name__}: {e}"}
        with self._lock:
            self._results.append((step, metrics))

    def poll(self) -> list[tuple[int, dict]]:
        """Finished evaluations since the last call, as `(step, metrics)`."""
        with self._lock:
            out, self._results = self._results, []
        return out

    def wait(self) -> list[tuple[int, dict]]:
        if self._thread is not None:
            self._thread.join()
        return self.poll()

    close = wait
