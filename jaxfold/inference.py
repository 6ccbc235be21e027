"""Inference: features -> structure and confidences -> files.

Library half of ``infer.py``:

* :func:`predict` runs the model on a FASTA record, raw pipeline features or processed
  features. Recycling iterations run one by one through a compiled single iteration
  (the computation of :func:`jaxfold.model.run_alphafold`, whose ``nn.while_loop`` runs
  the same iteration), so compilation and every recycle can be timed and shown in a
  progress bar.
* Writers, all atomic (temporary file + ``os.replace``: a crash never leaves half a file
  and never removes an earlier one): :func:`write_model_outputs` (``<name>_unrelaxed_<model>.pdb``
  / ``.cif`` with pLDDT in the B-factor column, ``<name>_pae_<model>.json`` in the AlphaFold
  DB layout) and :func:`write_sequence_summary` (``<name>_plddt.png``, ``<name>_pae.png``,
  ``timings.json`` and, last, ``ranking.json``, which marks a finished prediction).
* :func:`resolve_params` / :func:`load_model_params`: ``--params`` as an official
  ``params_model_*.npz``, a folder of them, or ``random`` (a smoke run; every output then
  says ``RANDOM PARAMETERS — NOT A PREDICTION``).
* :func:`run_inference`: the whole command (preprocessing in parallel, every model on
  every sequence, outputs), used by ``infer.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jaxfold.data.parsers import FastaRecord

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    'InferenceError',
    'OutputExistsError',
    'Progress',
    'RANDOM_PARAMS_LABEL',
    'RANDOM_PARAMS_LABEL_ASCII',
    'atomic_write',
    'check_not_finished',
    'default_models',
    'init_random_params',
    'load_model_params',
    'make_protein',
    'pae_json',
    'plot_pae',
    'plot_plddt',
    'predict',
    'ranking_summary',
    'resolve_params',
    'run_inference',
    'sequence_output_dir',
    'to_mmcif_string',
    'to_pdb_string',
    'trim_msa_rows',
    'write_model_outputs',
    'write_sequence_summary',
]

RANDOM_PARAMS_LABEL = 'RANDOM PARAMETERS \u2014 NOT A PREDICTION'
# PDB and mmCIF files are ASCII: the same words with a plain hyphen.
RANDOM_PARAMS_LABEL_ASCII = 'RANDOM PARAMETERS - NOT A PREDICTION'
FINISHED_MARKER = 'ranking.json'
OFFICIAL_PARAMS_URL = 'https://storage.googleapis.com/alphafold/alphafold_params_2022-12-06.tar'
_PARAMS_FILE_RE = re.compile(r'^params_(model_[1-5](?:_ptm)?)(?:_[^.]*)?\.npz$')


class InferenceError(RuntimeError):
    """A problem with the inputs or set-up of an inference run (one-line message)."""


class OutputExistsError(InferenceError):
    """A finished prediction is in the way and overwriting was not asked for."""


# ---------------------------------------------------------------------------------------
# Atomic files.
# ---------------------------------------------------------------------------------------


def atomic_write(path: PathLike, data: Union[str, bytes]) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode('utf-8') if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _json(obj: Any, **kwargs) -> str:
    return json.dumps(obj, **kwargs) + '\n'


# ---------------------------------------------------------------------------------------
# Progress.
# ---------------------------------------------------------------------------------------


class Progress:
    """A tqdm bar over the stages of a run (preprocessing, compilation, recycles, writing).

    ``enabled=None`` shows the bar when stderr is a terminal. When the bar is off,
    ``verbose=True`` prints one line per stage instead. :meth:`stage` names what is
    running; :meth:`advance` counts finished steps; :meth:`add` grows the total.
    """

    def __init__(self, total: int = 0, enabled: Optional[bool] = None, verbose: bool = False,
                 stream=None):
        self._stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self._stream, 'isatty', lambda: False)())
        self._bar = None
        self._verbose = verbose
        if enabled:
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(total=total, file=self._stream, unit='step', dynamic_ncols=True,
                             bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]')

    def stage(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)
        elif self._verbose:
            print(f'[jaxfold] {text}', file=self._stream, flush=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def add(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.total = (self._bar.total or 0) + n
            self._bar.refresh()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _NoProgress(Progress):
    def __init__(self):
        super().__init__(enabled=False)


# ---------------------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------------------


_STACK_SCOPES = ('/evoformer_iteration/', '/extra_msa_stack/', '/__layer_stack_no_state/')


def init_random_params(config, seed: int = 0, method: str = 'fast') -> dict:
    """Random parameters for ``config`` (for smoke runs: ``--params random``).

    ``method='fast'`` (default): shapes from ``jax.eval_shape`` of the model's initialiser (no
    compilation) and values drawn in NumPy: weights ``N(0, 1/fan_in)``, LayerNorm scales near 1,
    biases and offsets small. Unlike AlphaFold's initialisers, the output layers are not zero, so
    the random model gives a spread-out (meaningless) structure and varied confidences instead of
    every atom on one point and a flat pLDDT of 50.
    ``method='init'``: :func:`jaxfold.model.init.init_params` (AlphaFold's initialisers),
    compiled; this takes many minutes for a full-size preset on a CPU.
    """
    if method == 'init':
        import jax  # noqa: PLC0415

        from jaxfold.model.init import init_params  # noqa: PLC0415

        params = jax.jit(lambda rng: init_params(config, rng))(jax.random.PRNGKey(int(seed)))
        return jax.tree_util.tree_map(np.asarray, params)
    if method != 'fast':
        raise ValueError(f"method must be 'fast' or 'init', got {method!r}")
    from jaxfold.weights import ROOT_SCOPE, flat_to_tree, model_param_shapes  # noqa: PLC0415

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6A78]))
    flat = {}
    for key, shape in sorted(model_param_shapes(config).items()):
        name = key.rsplit('//', 1)[-1]
        body = shape[1:] if any(scope in key for scope in _STACK_SCOPES) else shape
        if name == 'scale':
            value = 1.0 + 0.05 * rng.standard_normal(shape)
        elif name in ('offset', 'bias') or name.endswith('_b'):
            value = 0.02 * rng.standard_normal(shape)
        elif name == 'trainable_point_weights':
            value = np.log(np.expm1(1.0)) + 0.05 * rng.standard_normal(shape)
        elif len(body) >= 2:
            fan_in = int(np.prod(body[:-1])) if name == 'output_w' else int(body[0])
            value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        else:
            value = 0.02 * rng.standard_normal(shape)
        flat[key] = np.asarray(value, np.float32)
    return flat_to_tree(flat)[ROOT_SCOPE]


def preset_of_params_file(path: PathLike) -> Optional[str]:
    """``params_model_2_ptm.npz`` -> ``'model_2_ptm'`` (also ``params_model_1_ptm_shrunk.npz``)."""
    match = _PARAMS_FILE_RE.match(Path(path).name)
    return match.group(1) if match else None


def missing_params_message() -> str:
    return ('no model parameters given (--params, or the JAXFOLD_PARAMS environment variable).\n'
            "  Get DeepMind's official AlphaFold parameters (about 5.3 GB, CC BY 4.0) with\n"
            '      python -m jaxfold.params download DIR\n'
            '  and pass --params DIR (or set JAXFOLD_PARAMS=DIR).\n'
            '  For a demo of the pipeline without parameters, use --params random '
            '(random weights: the structure is meaningless).')


def resolve_params(params: Optional[str], preset: str) -> Optional[Path]:
    """The ``.npz`` file for ``preset`` (None for ``random``).

    ``params``: a ``params_model_*.npz`` file (used for the one preset it is given for), or a
    folder holding ``params_<preset>.npz``.
    """
    if params is None or params == '':
        raise InferenceError(missing_params_message())
    if params == 'random':
        return None
    path = Path(params).expanduser()
    if path.is_dir():
        candidate = path / f'params_{preset}.npz'
        if not candidate.is_file():
            found = sorted(p.name for p in path.glob('params_model_*.npz'))
            raise InferenceError(
                f'no parameter file params_{preset}.npz in {path}'
                + (f' (it holds {", ".join(found)})' if found else
                   ' (no params_model_*.npz there; get them with '
                   '`python -m jaxfold.params download DIR`)'))
        return candidate
    if not path.exists():
        raise InferenceError(f'parameter file or folder not found: {path}')
    file_preset = preset_of_params_file(path)
    if file_preset is not None and preset != 'tiny':
        base = lambda p: p.replace('_ptm', '')  # noqa: E731
        if base(file_preset) != base(preset):
            raise InferenceError(f'parameter file {path.name} is for {file_preset}, not {preset}: '
                                 'pass a folder of parameter files to run several models')
    return path


def default_models(params: Optional[str]) -> List[str]:
    """The presets run when ``--models`` is not given.

    A ``params_<preset>*.npz`` file: that preset. A folder: the ``model_N_ptm`` presets it
    has files for (else the ``model_N`` ones), as AlphaFold's ``monomer_ptm`` / ``monomer``
    model presets. ``random`` (or anything else): ``model_1_ptm``.
    """
    if params and params != 'random':
        path = Path(params).expanduser()
        if path.is_file():
            return [preset_of_params_file(path) or 'model_1_ptm']
        if path.is_dir():
            for suffix in ('_ptm', ''):
                found = [f'model_{i}{suffix}' for i in range(1, 6)
                         if (path / f'params_model_{i}{suffix}.npz').is_file()]
                if found:
                    return found
    return ['model_1_ptm']


def _depth_hint(path: Path, config) -> str:
    """For a shape mismatch: the stacked depths the file has, as the overrides to pass."""
    try:
        with np.load(path, allow_pickle=False) as data:
            depth = {}
            for key in data.files:
                for stack, flag in (('/evoformer/evoformer_iteration/', 'evoformer-num-block'),
                                    ('/evoformer/extra_msa_stack/', 'extra-msa-stack-num-block')):
                    if stack in key and flag not in depth:
                        depth[flag] = int(data[key].shape[0])
    except Exception:  # noqa: BLE001 - only a hint
        return ''
    emb = config.model.embeddings_and_evoformer
    want = {'evoformer-num-block': emb.evoformer_num_block,
            'extra-msa-stack-num-block': emb.extra_msa_stack_num_block}
    differ = {k: v for k, v in depth.items() if want.get(k) != v}
    if not differ:
        return ''
    flags = ' '.join(f'--{k} {v}' for k, v in differ.items())
    return (f' (the file has fewer stacked blocks than the preset: if it was shrunk in depth, '
            f'pass {flags} and --structure-module-num-layer as it was made with)')


def load_model_params(params: Optional[str], preset: str, config, seed: int = 0
                      ) -> Tuple[dict, bool, Optional[Path]]:
    """``(parameter tree, is_random, file)`` for ``preset``; errors are :class:`InferenceError`."""
    from jaxfold.weights import ParamsError, load_alphafold_params  # noqa: PLC0415

    path = resolve_params(params, preset)
    if path is None:
        return init_random_params(config, seed), True, None
    try:
        return load_alphafold_params(path, config), False, path
    except ParamsError as e:
        lines = str(e).splitlines()
        first = lines[0].rstrip(':')
        detail = ''
        if len(lines) > 1:
            counts = [ln.strip().rstrip(':') for ln in lines[1:] if ln and not ln.startswith('  ')]
            examples = [ln.strip() for ln in lines[1:] if ln.startswith('  ') and '...' not in ln]
            detail = f' ({"; ".join(counts)}; e.g. {examples[0]})' if examples else ''
        hint = _depth_hint(path, config) if 'wrong shape' in str(e) else ''
        raise InferenceError(f'--models {preset}: {first}{detail}{hint}') from None


# ---------------------------------------------------------------------------------------
# Prediction.
# ---------------------------------------------------------------------------------------


def is_processed(features: Mapping[str, Any]) -> bool:
    """Processed model features (``msa_feat``, leading recycling axis) vs raw pipeline ones."""
    return 'msa_feat' in features and 'target_feat' in features


_MSA_ROW_FEATURES = ('msa_feat', 'msa_mask', 'bert_mask', 'true_msa', 'msa_row_mask')
_EXTRA_ROW_FEATURES = ('extra_msa', 'extra_msa_mask', 'extra_has_deletion', 'extra_deletion_value',
                       'extra_msa_row_mask')


def trim_msa_rows(batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Drops trailing MSA / extra-MSA rows that are padding in every recycling slice.

    Padding rows have ``msa_row_mask`` (``extra_msa_row_mask``) 0 and are masked everywhere in the
    model (attention keys, outer-product mean, column-global attention), so valid positions are
    unchanged (up to float rounding). At least one row of each is kept.
    """
    out = dict(batch)
    for row_mask_key, keys in (('msa_row_mask', _MSA_ROW_FEATURES),
                               ('extra_msa_row_mask', _EXTRA_ROW_FEATURES)):
        if row_mask_key not in out:
            continue
        valid = np.asarray(out[row_mask_key]).reshape(-1, np.shape(out[row_mask_key])[-1]) > 0
        rows = valid.any(axis=0)
        keep = max(1, int(np.nonzero(rows)[0].max()) + 1 if rows.any() else 1)
        for key in keys:
            if key in out and np.ndim(out[key]) >= 2:
                out[key] = out[key][:, :keep]
    return out


def predict(features_or_record: Union[Mapping[str, Any], FastaRecord, str], config, params: Mapping,
            *, seed: int = 0, pipeline_options: Optional[Mapping[str, Any]] = None,
            progress: Optional[Progress] = None, timings: Optional[Dict[str, float]] = None,
            label: str = '', trim_msa_padding: bool = True, mesh=None, kernels: Optional[str] = None,
            chunk_size: Union[int, str, None] = None, outputs: str = 'full',
            run_settings: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """Predicts a structure: record / raw features / processed features -> model outputs.

    Args:
      features_or_record: a :class:`FastaRecord` or sequence string (run through
        :func:`jaxfold.data.pipeline.build_raw_features` with ``pipeline_options``; default
        single-sequence MSA), raw pipeline features, or processed features (with the leading
        recycling axis, as :func:`jaxfold.data.feature_processing.process_features` returns).
      config: ``jaxfold.config.model_config(...)``.
      params: the parameter tree (``load_alphafold_params`` / ``init_random_params``).
      seed: seed of the feature processing (MSA sampling and masking).
      progress: optional :class:`Progress` (stages: features, compile, each recycle).
      timings: optional dict receiving ``preprocess`` (records only), ``process_features``,
        ``compile`` (0 when cached), ``recycle_<i>`` and ``predict`` seconds.
      mesh, kernels, chunk_size, outputs: as :func:`jaxfold.model.predict.predict` (the one
        prediction path this calls): DAP mesh, ``auto``/``xla``/``pallas``, ``auto``/int,
        ``full``/``lean``.
      run_settings: optional dict receiving the resolved settings (kernels, chunk size, dtype,
        DAP size, estimated peak and free device memory).
      label: prefix of the progress stage names.
      trim_msa_padding: drop the all-padding MSA and extra-MSA rows that AlphaFold's fixed-size
        batch carries (:func:`trim_msa_rows`): the same prediction, far less work when the
        alignment is shallower than ``max_msa_clusters`` / ``max_extra_msa`` (the padded batch
        of a 38-residue protein with a 31-row MSA is 508 + 5120 rows). Only the shapes of
        ``masked_msa/logits`` and ``representations/msa`` change (fewer rows).

    Returns:
      The outputs of :func:`jaxfold.model.run_alphafold`: flat keys
      (``structure_module/final_atom_positions``, ``confidence/plddt``, ...), NumPy arrays,
      plus ``features/aatype``, ``features/residue_index`` and ``features/seq_mask`` (first
      recycling slice) for the writers.
    """
    from jaxfold.data.feature_processing import process_features  # noqa: PLC0415
    from jaxfold.model.memory import ChainTooLongError  # noqa: PLC0415
    from jaxfold.model.predict import number_of_passes, predict as run_model  # noqa: PLC0415

    progress = progress or _NoProgress()
    timings = {} if timings is None else timings
    prefix = f'{label} ' if label else ''
    features = features_or_record
    if isinstance(features, (FastaRecord, str)):
        from jaxfold.data.pipeline import build_raw_features  # noqa: PLC0415

        progress.stage(f'{prefix}preprocessing')
        start = time.perf_counter()
        features = build_raw_features(features, **dict(pipeline_options or {}))
        timings['preprocess'] = time.perf_counter() - start
    if not is_processed(features):
        progress.stage(f'{prefix}processing features')
        start = time.perf_counter()
        features = process_features(features, config, seed=seed)
        timings['process_features'] = time.perf_counter() - start

    batch_all = {k: np.asarray(v) for k, v in features.items()
                 if np.asarray(v).dtype.kind in 'biuf'}
    if trim_msa_padding:
        batch_all = trim_msa_rows(batch_all)
    num_passes = number_of_passes(config, batch_all)

    def pass_stage(index: int) -> str:
        return (f'{prefix}recycle {index}/{num_passes - 1}' if index + 1 < num_passes
                else f'{prefix}final pass ({num_passes - 1} recycles)')

    def on_compiled(seconds):
        progress.advance()
        progress.stage(pass_stage(0))

    def on_pass(index, total, seconds):
        timings[f'recycle_{index}'] = seconds
        progress.advance()
        if index + 1 < total:
            progress.stage(pass_stage(index + 1))

    progress.stage(f'{prefix}compiling')
    run_timings: Dict[str, Any] = {}
    try:
        flat = run_model(config, params, batch_all, mesh=mesh, kernels=kernels, chunk_size=chunk_size,
                         outputs=outputs, timings=run_timings, on_compiled=on_compiled, on_pass=on_pass)
    except ChainTooLongError as e:
        raise InferenceError(str(e)) from None
    timings['compile'] = run_timings['compile']
    timings['predict'] = run_timings['predict']
    if run_settings is not None:
        run_settings.update(dataclasses.asdict(run_timings['settings']))
    flat['features/aatype'] = batch_all['aatype'][0]
    flat['features/residue_index'] = batch_all['residue_index'][0]
    flat['features/seq_mask'] = batch_all['seq_mask'][0]
    if not np.all(np.isfinite(flat['structure_module/final_atom_positions'])):
        raise InferenceError('the model produced non-finite coordinates (NaN/inf): check the '
                             'parameters and the precision (--precision fp32)')
    return flat


# ---------------------------------------------------------------------------------------
# Writers.
# ---------------------------------------------------------------------------------------


def sequence_output_dir(output_dir: PathLike, record_or_name: Union[FastaRecord, str]) -> Path:
    name = record_or_name.safe_name if isinstance(record_or_name, FastaRecord) else record_or_name
    return Path(output_dir) / name


def check_not_finished(seq_dir: PathLike, overwrite: bool = False) -> None:
    """Raises :class:`OutputExistsError` if ``seq_dir`` holds a finished prediction."""
    marker = Path(seq_dir) / FINISHED_MARKER
    if marker.exists() and not overwrite:
        raise OutputExistsError(f'a finished prediction is already in {seq_dir} ({FINISHED_MARKER} '
                                'exists): pass --overwrite to replace it, or choose another '
                                '--output-dir')


def make_protein(outputs: Mapping[str, np.ndarray], features: Optional[Mapping[str, Any]] = None):
    """The predicted :class:`jaxfold.common.protein.Protein` (pLDDT as B-factors; residues
    numbered from 1, as AlphaFold writes them). Padded residues are dropped."""
    from jaxfold.common import protein  # noqa: PLC0415

    processed = features is not None and is_processed(features)

    def feature(key):
        if f'features/{key}' in outputs:
            return np.asarray(outputs[f'features/{key}'])
        if features is None or key not in features:
            raise KeyError(f'{key} is needed to write a structure (pass the features)')
        value = np.asarray(features[key])
        if processed:  # leading recycling axis
            return value[0]
        if key == 'aatype' and value.ndim == 2:  # raw one-hot [N, 21]
            return value.argmax(-1)
        return value

    aatype = feature('aatype')
    residue_index = feature('residue_index')
    try:
        seq_mask = feature('seq_mask') > 0.5
    except KeyError:
        seq_mask = np.ones(aatype.shape, bool)
    n = int(seq_mask.sum())
    plddt = np.asarray(outputs['confidence/plddt'])
    return protein.from_prediction(
        aatype=aatype[:n],
        final_atom_positions=outputs['structure_module/final_atom_positions'][:n],
        final_atom_mask=outputs['structure_module/final_atom_mask'][:n],
        residue_index=residue_index[:n] + 1,
        plddt=plddt[:n])


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version('jaxfold')
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return 'dev'


def _remarks(model_name: str, random_params: bool, outputs: Mapping[str, np.ndarray]) -> List[str]:
    lines = []
    if random_params:
        lines.append(RANDOM_PARAMS_LABEL_ASCII)
    lines.append(f'jaxfold {_version()} AlphaFold2 prediction, model {model_name}'
                 + (' (random parameters)' if random_params else ''))
    lines.append('B-factor column: per-residue pLDDT (0-100)')
    lines.append(f'mean pLDDT {float(np.mean(outputs["confidence/plddt"])):.2f}'
                 + (f', pTM {float(outputs["confidence/ptm"]):.4f}'
                    if 'confidence/ptm' in outputs else ''))
    return lines


def to_pdb_string(prot, model_name: str, outputs: Mapping[str, np.ndarray],
                  random_params: bool = False) -> str:
    """PDB text with ``REMARK 1`` lines naming the model (and random parameters)."""
    from jaxfold.common import protein  # noqa: PLC0415

    body = protein.to_pdb(prot)
    remarks = ''.join(f'REMARK   1 {line[:69]}\n' for line in _remarks(model_name, random_params,
                                                                       outputs))
    return remarks + body


def to_mmcif_string(prot, name: str, model_name: str, outputs: Mapping[str, np.ndarray],
                    random_params: bool = False) -> str:
    """mmCIF text with a ``_struct.title`` (and comments) naming the model."""
    from jaxfold.common import protein  # noqa: PLC0415

    text = protein.to_mmcif(prot, name=name)
    lines = text.split('\n')
    remarks = _remarks(model_name, random_params, outputs)
    title = remarks[0] if random_params else remarks[0]
    title = title.replace("'", '')
    block = re.sub(r'\s+', '_', str(name).strip())
    insert = [f'# {line}' for line in remarks] + [
        f'_struct.entry_id {block}', f"_struct.title '{title}'", '#']
    return '\n'.join(lines[:2] + insert + lines[2:])


def pae_json(pae: np.ndarray, max_pae: float, extra: Optional[Mapping[str, Any]] = None) -> str:
    """The PAE in the AlphaFold DB layout (AlphaFold's ``confidence.pae_json``): errors rounded
    to 1 decimal, ``[{"predicted_aligned_error": [[...]], "max_predicted_aligned_error": x}]``.
    ``extra`` keys (e.g. a warning) are added to the one object."""
    rounded = np.round(np.asarray(pae, np.float64), decimals=1)
    entry = {'predicted_aligned_error': rounded.tolist(),
             'max_predicted_aligned_error': float(max_pae)}
    entry.update(extra or {})
    return json.dumps([entry], indent=None, separators=(',', ':'))


def model_file_names(name: str, model_name: str) -> Dict[str, str]:
    return {'pdb': f'{name}_unrelaxed_{model_name}.pdb',
            'cif': f'{name}_unrelaxed_{model_name}.cif',
            'pae': f'{name}_pae_{model_name}.json'}


def write_model_outputs(seq_dir: PathLike, name: str, model_name: str,
                        outputs: Mapping[str, np.ndarray],
                        features: Optional[Mapping[str, Any]] = None, *,
                        random_params: bool = False) -> List[Path]:
    """Writes ``<name>_unrelaxed_<model>.pdb`` / ``.cif`` and (pTM models)
    ``<name>_pae_<model>.json`` into ``seq_dir``; returns the paths."""
    seq_dir = Path(seq_dir)
    files = model_file_names(name, model_name)
    prot = make_protein(outputs, features)
    written = [atomic_write(seq_dir / files['pdb'],
                            to_pdb_string(prot, model_name, outputs, random_params)),
               atomic_write(seq_dir / files['cif'],
                            to_mmcif_string(prot, f'{name}_{model_name}', model_name, outputs,
                                            random_params))]
    if 'confidence/predicted_aligned_error' in outputs:
        n = prot.num_res
        pae = np.asarray(outputs['confidence/predicted_aligned_error'])[:n, :n]
        extra = {'warning': RANDOM_PARAMS_LABEL} if random_params else None
        written.append(atomic_write(seq_dir / files['pae'], pae_json(
            pae, float(outputs['confidence/max_predicted_aligned_error']), extra)))
    return written


def ranking_summary(results: Mapping[str, Mapping[str, np.ndarray]]) -> Dict[str, Any]:
    """AlphaFold's ``ranking_debug.json`` content, plus pTM where present.

    ``plddts``: model -> ranking confidence (mean pLDDT for monomer models, as AlphaFold);
    ``ptm``: model -> pTM (pTM models only); ``order``: models by decreasing ranking
    confidence.
    """
    confidences = {m: float(o['confidence/ranking_confidence']) for m, o in results.items()}
    order = [m for m, _ in sorted(confidences.items(), key=lambda kv: kv[1], reverse=True)]
    summary: Dict[str, Any] = {'plddts': confidences}
    ptms = {m: float(o['confidence/ptm']) for m, o in results.items() if 'confidence/ptm' in o}
    if ptms:
        summary['ptm'] = ptms
    summary['order'] = order
    return summary


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use('Agg', force=True)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def _save_figure(fig, path: Path, title: str, random_params: bool) -> Path:
    import io  # noqa: PLC0415

    buffer = io.BytesIO()
    metadata = {'Title': title, 'Software': f'jaxfold {_version()}'}
    if random_params:
        metadata['Description'] = RANDOM_PARAMS_LABEL_ASCII  # PNG text chunks are Latin-1
    fig.savefig(buffer, format='png', dpi=100, metadata=metadata)
    return atomic_write(path, buffer.getvalue())


def plot_plddt(path: PathLike, name: str, results: Mapping[str, Mapping[str, np.ndarray]],
               order: Sequence[str], random_params: bool = False) -> Optional[Path]:
    """pLDDT per residue, one line per model (ranked); None when matplotlib is absent."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        for band, color in ((90, '#0053D6'), (70, '#65CBF3'), (50, '#FFDB13'), (0, '#FF7D45')):
            ax.axhspan(band, 100 if band == 90 else {70: 90, 50: 70, 0: 50}[band], color=color,
                       alpha=0.12, lw=0)
        for rank, model in enumerate(order):
            plddt = np.asarray(results[model]['confidence/plddt'])
            mask = np.asarray(results[model].get('features/seq_mask', np.ones_like(plddt))) > 0.5
            plddt = plddt[mask]
            ax.plot(np.arange(1, len(plddt) + 1), plddt,
                    label=f'rank {rank + 1}: {model} ({plddt.mean():.1f})')
        ax.set_xlabel('residue')
        ax.set_ylabel('pLDDT')
        ax.set_ylim(0, 100)
        ax.legend(loc='lower right', fontsize='small')
        title = f'{name}: predicted lDDT'
        if random_params:
            title = f'{RANDOM_PARAMS_LABEL}\n{title}'
        ax.set_title(title, color='red' if random_params else 'black')
        fig.tight_layout()
        return _save_figure(fig, Path(path), f'{name}: predicted lDDT', random_params)
    finally:
        plt.close(fig)


def plot_pae(path: PathLike, name: str, results: Mapping[str, Mapping[str, np.ndarray]],
             order: Sequence[str], random_params: bool = False) -> Optional[Path]:
    """Predicted aligned error heat maps of the pTM models (ranked); None when there is none
    or matplotlib is absent."""
    models = [m for m in order if 'confidence/predicted_aligned_error' in results[m]]
    if not models:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2 + 0.3 * random_params),
                             squeeze=False)
    try:
        for ax, model in zip(axes[0], models):
            out = results[model]
            n = int((np.asarray(out.get('features/seq_mask', np.ones(
                out['confidence/plddt'].shape))) > 0.5).sum())
            pae = np.asarray(out['confidence/predicted_aligned_error'])[:n, :n]
            image = ax.imshow(pae, cmap='Greens_r', vmin=0,
                              vmax=float(out['confidence/max_predicted_aligned_error']),
                              extent=(0.5, n + 0.5, n + 0.5, 0.5))
            ax.set_title(f'{model}' + (f' (pTM {float(out["confidence/ptm"]):.2f})'
                                       if 'confidence/ptm' in out else ''), fontsize='medium')
            ax.set_xlabel('scored residue')
            ax.set_ylabel('aligned residue')
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='expected error (\u00c5)')
        title = f'{name}: predicted aligned error'
        if random_params:
            title = f'{RANDOM_PARAMS_LABEL}\n{title}'
        fig.suptitle(title, color='red' if random_params else 'black')
        fig.tight_layout()
        return _save_figure(fig, Path(path), f'{name}: predicted aligned error', random_params)
    finally:
        plt.close(fig)


def write_sequence_summary(seq_dir: PathLike, name: str,
                           results: Mapping[str, Mapping[str, np.ndarray]],
                           timings: Mapping[str, float], *, random_params: bool = False,
                           plots: bool = True, extra: Optional[Mapping[str, Any]] = None
                           ) -> List[Path]:
    """Plots, ``timings.json`` and, last, ``ranking.json`` (the finished-prediction marker)."""
    seq_dir = Path(seq_dir)
    summary = ranking_summary(results)
    written = []
    if plots:
        if _pyplot() is None:
            message = ('matplotlib is not installed: the pLDDT / PAE plots are skipped '
                       '(pip install matplotlib)')
            warnings.warn(message, RuntimeWarning, stacklevel=2)  # shown once per place
        else:
            for path in (plot_plddt(seq_dir / f'{name}_plddt.png', name, results, summary['order'],
                                    random_params),
                         plot_pae(seq_dir / f'{name}_pae.png', name, results, summary['order'],
                                  random_params)):
                if path is not None:
                    written.append(path)
    label = {'warning': RANDOM_PARAMS_LABEL} if random_params else {}
    written.append(atomic_write(seq_dir / 'timings.json', _json(
        {**label, **{k: round(float(v), 4) for k, v in timings.items()}}, indent=4)))
    written.append(atomic_write(seq_dir / FINISHED_MARKER, _json(
        {**label, **summary, **dict(extra or {})}, indent=4)))
    return written


# ---------------------------------------------------------------------------------------
# The whole run (infer.py).
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """One model to run: preset name, config, and (lazily) its parameters."""
    name: str
    config: Any
    params: Optional[dict] = None
    random: bool = False
    path: Optional[Path] = None


@dataclasses.dataclass
class SequenceReport:
    name: str
    output_dir: Optional[Path] = None
    error: Optional[str] = None
    ranking: Optional[Dict[str, Any]] = None
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    files: List[Path] = dataclasses.field(default_factory=list)


def build_config(preset: str, *, num_recycle: Optional[int] = None, precision: str = 'fp32',
                 overrides: Optional[Mapping[str, Any]] = None):
    """``model_config(preset, ...)`` with the command line's overrides."""
    from jaxfold.config import model_config  # noqa: PLC0415

    kwargs = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if num_recycle is not None:
        kwargs['num_recycle'] = int(num_recycle)
    if precision not in ('fp32', 'bf16'):
        raise InferenceError(f'unknown precision {precision!r} (fp32 or bf16)')
    if precision == 'bf16':
        kwargs['dtype'] = 'bfloat16'
    try:
        return model_config(preset, **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise InferenceError(f'model {preset!r}: {str(e).strip(chr(34) + chr(39))}') from None


def run_inference(records: Sequence[FastaRecord], models: Sequence[ModelSpec], output_dir: PathLike,
                  *, pipeline_options: Mapping[str, Any], params: Optional[str], seed: int = 0,
                  workers: int = 1, use_ray: bool = False, overwrite: bool = False,
                  plots: bool = True, progress: Optional[Progress] = None,
                  trim_msa_padding: bool = True, mesh=None, kernels: str = 'auto',
                  chunk_size: Union[int, str] = 'auto',
                  log: Callable[[str], None] = lambda s: None) -> List[SequenceReport]:
    """Preprocesses ``records`` in parallel and, as each is ready, runs every model on it and
    writes its files into ``output_dir/<name>/``. Returns one report per record (``error`` set
    for the ones that failed); raises :class:`InferenceError` for set-up problems found before
    any work (finished outputs in the way, bad parameters). ``mesh``, ``kernels`` and
    ``chunk_size`` go to :func:`jaxfold.model.predict.predict`, which runs with lean outputs
    (what the writers need: no N x N x 64 logits on the host)."""
    from jaxfold.data.pipeline import preprocess_many  # noqa: PLC0415

    progress = progress or _NoProgress()
    output_dir = Path(output_dir)
    # Refuse before any work: finished predictions in the way.
    for record in records:
        check_not_finished(sequence_output_dir(output_dir, record), overwrite)
    num_steps_per_model = 0
    for spec in models:
        num_steps_per_model += 1 + 1 + (spec.config.model.num_recycle + 1) + 1
    progress.add(len(records) * (1 + num_steps_per_model + 1) + len(models))

    # Parameters: load (or draw) them all first, so that a bad file fails before any work.
    for spec in models:
        if spec.params is None:
            progress.stage(f'loading parameters {spec.name}')
            start = time.perf_counter()
            spec.params, spec.random, spec.path = load_model_params(params, spec.name,
                                                                    spec.config, seed)
            import jax  # noqa: PLC0415

            spec.params = jax.device_put(spec.params)  # once, not per prediction
            log(f'{spec.name}: {"random parameters" if spec.random else spec.path} '
                f'({time.perf_counter() - start:.1f} s)')
        progress.advance()

    reports: Dict[int, SequenceReport] = {}
    progress.stage(f'preprocessing {len(records)} sequence(s)')
    for result in preprocess_many(records, workers=workers, use_ray=use_ray, **pipeline_options):
        record = result.record
        name = record.safe_name
        seq_dir = sequence_output_dir(output_dir, record)
        report = SequenceReport(name=name, output_dir=seq_dir)
        reports[result.index] = report
        progress.advance()
        if not result.ok:
            report.error = result.error
            progress.write(f'error: {result.error}')
            progress.advance(num_steps_per_model + 1)
            continue
        timings: Dict[str, float] = {'features': result.timings.get('preprocess', 0.0),
                                     'msa': result.timings.get('msa', 0.0),
                                     'templates': result.timings.get('templates', 0.0)}
        results: Dict[str, Dict[str, np.ndarray]] = {}
        random_params = any(spec.random for spec in models)
        try:
            for spec in models:
                model_timings: Dict[str, float] = {}
                settings: Dict[str, Any] = {}
                outputs = predict(result.features, spec.config, spec.params, seed=seed,
                                  progress=progress, timings=model_timings,
                                  label=f'{name} {spec.name}', trim_msa_padding=trim_msa_padding,
                                  mesh=mesh, kernels=kernels, chunk_size=chunk_size, outputs='lean',
                                  run_settings=settings)
                log(f'{name} {spec.name}: kernels {settings["kernels"]}, chunk size '
                    f'{settings["chunk_size"] or "none"}, {settings["dtype"]}'
                    + (f', DAP over {settings["dap_size"]} devices' if settings['dap_size'] > 1 else '')
                    + f', estimated peak {settings["estimated_peak_bytes"] / 2**30:.1f} GiB of '
                      f'{settings["budget_bytes"] / 2**30:.1f} GiB free')
                progress.advance()  # process_features
                for key, value in model_timings.items():
                    timings[f'{key}_{spec.name}'] = value
                progress.stage(f'{name} {spec.name} writing')
                start = time.perf_counter()
                report.files += write_model_outputs(seq_dir, name, spec.name, outputs,
                                                    random_params=spec.random)
                timings[f'write_{spec.name}'] = time.perf_counter() - start
                progress.advance()
                results[spec.name] = outputs
                log(f'{name} {spec.name}: mean pLDDT {float(np.mean(outputs["confidence/plddt"])):.2f}'
                    + (f', pTM {float(outputs["confidence/ptm"]):.3f}'
                       if 'confidence/ptm' in outputs else '')
                    + f' (compile {model_timings.get("compile", 0):.1f} s, '
                      f'predict {model_timings.get("predict", 0):.1f} s)')
            progress.stage(f'{name} writing summary')
            start = time.perf_counter()
            timings['total'] = (sum(v for k, v in timings.items()
                                    if k in ('features',) or k.startswith(
                                        ('process_features_', 'compile_', 'predict_', 'write_'))))
            extra = {'info': {'num_alignments': result.info.get('num_alignments'),
                              'msa_depth': result.info.get('msa_depth'),
                              'templates': result.info.get('templates', [])}}
            files = write_sequence_summary(seq_dir, name, results, timings,
                                           random_params=random_params, plots=plots, extra=extra)
            timings['write_summary'] = time.perf_counter() - start
            report.files += files
            report.ranking = ranking_summary(results)
            report.timings = timings
            progress.advance()
        except InferenceError as e:
            report.error = f'{name}: {e}'
            progress.write(f'error: {report.error}')
    progress.stage('done')
    progress.close()
    return [reports[i] for i in sorted(reports)]


def load_records(fasta_paths: Iterable[PathLike]) -> List[FastaRecord]:
    """Reads every FASTA file; duplicate names are an error (their outputs would collide)."""
    from jaxfold.data.parsers import ParseError, read_fasta  # noqa: PLC0415

    records: List[FastaRecord] = []
    seen: Dict[str, str] = {}
    for path in fasta_paths:
        try:
            file_records = read_fasta(path)
        except ParseError as e:
            raise InferenceError(f'malformed FASTA: {e}') from None
        except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
            text = str(e) if isinstance(e, FileNotFoundError) else f'{path}: {e}'
            raise InferenceError(f'cannot read FASTA: {text}') from None
        for record in file_records:
            if record.safe_name in seen:
                raise InferenceError(f'two sequences named {record.safe_name!r} ({seen[record.safe_name]} '
                                     f'and {path}): their outputs would share one folder; '
                                     'rename one of them')
            seen[record.safe_name] = str(path)
            records.append(record)
    return records


def today() -> str:
    return datetime.date.today().isoformat()
