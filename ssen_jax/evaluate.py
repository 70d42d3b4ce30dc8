r"""Evaluates an SR method on a benchmark folder or CUFED5 with the published protocol.

  python -m ssen_jax.evaluate --method bicubic --dataset_dir ../shared/datasets/Set5
  python -m ssen_jax.evaluate --method bicubic --dataset cufed5 --dataset_dir CUFED5 \
      --output_json bicubic_cufed5.json

Protocol: HR cropped to a multiple of the scale; LR = MATLAB bicubic imresize(hr, 1/scale) rounded
to uint8; SR rounded to uint8; PSNR/SSIM on BT.601 Y for every three-channel file (single-channel files: their own channel),
`scale` pixels shaved per border; SSIM with an 11x11 Gaussian window (sigma 1.5), no padding.
RGB PSNR (same shave) is reported too, labelled as such.

The per-image loop (`evaluate_examples`) takes any `sr_fn(lr_uint8, refs) -> sr`, so model
evaluation only has to supply a different callable.
"""
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import app
from absl import flags

from ssen_jax import datasets
from ssen_jax import imresize as imresize_lib
from ssen_jax import metrics

SrFn = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (importers keep their own flags)."""
  flags.DEFINE_enum('method', None, ['bicubic', 'model'],
                    'SR method to evaluate (default: model with --workdir, else bicubic).')
  flags.DEFINE_string('workdir', None, 'Training workdir of the model to evaluate.')
  flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_bool('best', False, 'Use the checkpoint with the best eval PSNR.')
  flags.DEFINE_enum(
      'dataset', 'folder', ['folder', 'cufed5'],
      'folder: HR images directly in --dataset_dir; cufed5: XXX_0.png HR + XXX_1..5.png refs.')
  flags.DEFINE_string('dataset_dir', None, 'Folder holding the dataset.')
  flags.DEFINE_integer('scale', 4, 'SR factor (also the border shave).')
  flags.DEFINE_string('output_json', None, 'Optional path for the results as JSON (checked '
                      'before any compute; written atomically).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output_json file.')
  flags.mark_flag_as_required('dataset_dir')


def protocol_line(scale: int) -> str:
  """One sentence stating the evaluation protocol, printed with every table."""
  return (f'Protocol: x{scale}, LR = MATLAB bicubic imresize (antialiased, a=-0.5) rounded to '
          f'uint8; SR rounded to uint8; PSNR/SSIM on Y (BT.601; single-channel files: own channel), '
          f'shave = {scale} px; SSIM 11x11 Gaussian sigma 1.5, valid; PSNR-RGB same shave.')


def bicubic_sr_fn(scale: int) -> SrFn:
  """The bicubic baseline: MATLAB imresize of the uint8 LR by `scale` (refs ignored)."""

  def sr_fn(lr: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
    del refs  # Bicubic upsampling does not use references.
    return imresize_lib.imresize(lr, scale)

  return sr_fn


def evaluate_examples(examples: Sequence[dict], sr_fn: SrFn, *, scale: int,
                      log_fn: Callable[[str], None] | None = None) -> dict:
  """Runs `sr_fn` on every example and scores it.

  Args:
    examples: dicts from `ssen_jax.datasets` (`name`, `hr` (H, W, 3) uint8, `lr` uint8, `refs`,
      optional `gray`: the HR file has a single channel).
    sr_fn: `sr_fn(lr_uint8 (h, w, 3), refs) -> (H, W, 3)` uint8 or float in [0, 1].
    scale: SR factor and border shave.
    log_fn: called with one line per image (e.g. `print`), or None.

  Returns:
    {'num_images', 'psnr', 'ssim', 'psnr_rgb', 'seconds', 'per_image': [{'name', 'psnr', 'ssim',
    'psnr_rgb'}, ...]} with means over images.

  Raises:
    ValueError: no examples, or an SR output whose size differs from its HR image.
  """
  if not examples:
    raise ValueError('no examples to evaluate')
  per_image = []
  start = time.perf_counter()
  for ex in examples:
    sr = np.asarray(sr_fn(ex['lr'], ex['refs']))
    if sr.shape[:2] != ex['hr'].shape[:2]:
      raise ValueError(f'{ex["name"]}: SR output {sr.shape} does not match HR {ex["hr"].shape}')
    gray = ex.get('gray', False)
    row = {'name': ex['name'],
           'psnr': metrics.psnr_y(sr, ex['hr'], scale, gray=gray),
           'ssim': metrics.ssim_y(sr, ex['hr'], scale, gray=gray),
           'psnr_rgb': metrics.psnr_rgb(sr, ex['hr'], scale)}
    per_image.append(row)
    if log_fn:
      log_fn(f'{row["name"]}: PSNR {row["psnr"]:.3f} dB, SSIM {row["ssim"]:.4f}')
  return {'num_images': len(per_image),
          'psnr': float(np.mean([r['psnr'] for r in per_image])),
          'ssim': float(np.mean([r['ssim'] for r in per_image])),
          'psnr_rgb': float(np.mean([r['psnr_rgb'] for r in per_image])),
          'seconds': time.perf_counter() - start,
          'per_image': per_image}


def markdown_table(results: dict, *, title: str, scale: int) -> str:
  """Per-image rows and the mean as a Markdown table, preceded by the protocol."""
  lines = [f'### {title}', '', protocol_line(scale), '',
           '| image | PSNR-Y (dB) | SSIM-Y | PSNR-RGB (dB) |', '|---|---:|---:|---:|']
  for r in results['per_image']:
    lines.append(f'| {r["name"]} | {r["psnr"]:.3f} | {r["ssim"]:.4f} | {r["psnr_rgb"]:.3f} |')
  lines.append(f'| **mean ({results["num_images"]} images)** | **{results["psnr"]:.3f}** | '
               f'**{results["ssim"]:.4f}** | **{results["psnr_rgb"]:.3f}** |')
  return '\n'.join(lines)


def load_dataset(kind: str, directory: str, scale: int) -> list[dict]:
  """`datasets.load_folder` or `datasets.load_cufed5` by name."""
  loaders = {'folder': datasets.load_folder, 'cufed5': datasets.load_cufed5}
  return loaders[kind](directory, scale)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def check_output_json(path: str, overwrite: bool) -> None:
  """Fails before any compute if `path` exists (without `overwrite`) or its folder cannot take
  a file."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    _fail(f'--output_json {path} is a folder')
  if os.path.exists(path) and not overwrite:
    _fail(f'--output_json {path} exists; pass --overwrite to replace it')
  if not os.path.isdir(folder):
    _fail(f'folder {folder} of --output_json does not exist')
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-'):
      pass
  except OSError as e:
    _fail(f'cannot write in {folder} (--output_json): {e.strerror or e}')


def _write_json(path: str, results: dict) -> None:
  """Temporary file in the same folder, then rename: an existing file is never left truncated."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    with tempfile.NamedTemporaryFile('w', dir=folder, prefix='.output_json-', suffix='.tmp',
                                     delete=False) as f:
      json.dump(results, f, indent=2)
    os.replace(f.name, path)
  except OSError as e:
    _fail(f'cannot write {path}: {e}')


def evaluate_workdir(examples: list[dict], *, scale: int) -> tuple[str, dict]:
  """Scores the model of --workdir; returns a paper-style table and the JSON results."""
  from ssen_jax import evaluation  # Imports JAX and the models: only for model evaluation.
  from ssen_jax import inference
  try:
    gen = inference.load_generator(FLAGS.workdir, FLAGS.checkpoint_step, FLAGS.best)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if gen.scale != scale:
    _fail(f'the model in {FLAGS.workdir} is x{gen.scale}, but --scale is {scale}')
  import jax
  sr_jit = jax.jit(lambda p, lr, ref: jax.numpy.clip(gen.model.apply({'params': p}, lr, ref), 0, 1))
  model = evaluation.evaluate_model(examples, sr_jit, gen.params, scale=scale,
                                    uses_ref=gen.uses_ref,
                                    log_fn=lambda line: print(line, file=sys.stderr))
  bicubic = evaluate_examples(examples, bicubic_sr_fn(scale), scale=scale)
  name = f'{gen.config.model.variant} (step {gen.step})'
  per_level = FLAGS.dataset == 'cufed5'
  table = evaluation.markdown_table([('Bicubic', bicubic), (name, model)], scale=scale,
                                    per_level=per_level)
  title = (f'### {name} x{scale} on {FLAGS.dataset_dir} '
           f'({"CUFED5-style, one reference per level" if per_level else "benchmark folder"})')
  results = {'num_images': len(examples), 'psnr': model['psnr'], 'ssim': model['ssim'],
             'psnr_rgb': model['psnr_rgb'],
             'per_image': [] if model['per_level'] else model['all']['per_image'],
             'levels': {k: {'psnr': v['psnr'], 'ssim': v['ssim'], 'per_image': v['per_image']}
                        for k, v in model['levels'].items()},
             'controls': {k: {'psnr': v['psnr'], 'ssim': v['ssim'], 'per_image': v['per_image']}
                          for k, v in model['controls'].items()},
             'ref_gain': model['ref_gain'],
             'bicubic': {'psnr': bicubic['psnr'], 'ssim': bicubic['ssim']},
             'workdir': FLAGS.workdir, 'step': gen.step, 'variant': gen.config.model.variant}
  return f'{title}\n\n{table}', results


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  scale = FLAGS.scale
  if scale < 1:
    _fail(f'--scale must be >= 1, got {scale}')
  method = FLAGS.method or ('model' if FLAGS.workdir else 'bicubic')
  if method == 'model' and not FLAGS.workdir:
    _fail('--method=model needs --workdir')
  if FLAGS.output_json:
    check_output_json(FLAGS.output_json, FLAGS.overwrite)
  try:
    examples = load_dataset(FLAGS.dataset, FLAGS.dataset_dir, scale)
  except datasets.DatasetError as e:
    _fail(str(e))
  if method == 'model':
    table, results = evaluate_workdir(examples, scale=scale)
    print(table)
  else:
    try:
      results = evaluate_examples(examples, bicubic_sr_fn(scale), scale=scale)
    except ValueError as e:
      _fail(str(e))
    title = f'{method} x{scale} on {FLAGS.dataset_dir} ({FLAGS.dataset})'
    print(markdown_table(results, title=title, scale=scale))
  results.update(method=method, dataset=FLAGS.dataset, dataset_dir=FLAGS.dataset_dir,
                 scale=scale, protocol=protocol_line(scale))
  if FLAGS.output_json:
    _write_json(FLAGS.output_json, results)


if __name__ == '__main__':
  define_flags()
  app.run(main)
