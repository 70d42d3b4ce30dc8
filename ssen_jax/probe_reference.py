r"""Which part of a RefSR model's reference gain comes from which part of its alignment.

  python -m ssen_jax.probe_reference --workdir W --out_dir W/probe
  python -m ssen_jax.probe_reference --workdir W --out_dir W/probe_curve --every_checkpoint \
      --settings full,no_learned --shifts 0,2,4,8

For an SSEN RefSR workdir (with or without the correlation prior) on a CUFED5-style set (default:
the demo's evaluation set for demo runs, else the config's `data.eval_dir`), under four test-time
settings (`ssen_jax.eval.probe`: as trained; SSEN's learned offsets zeroed; the prior's flow zeroed;
both): every level, oracle, unrelated and ref_gain, and the shift probe (the HR image itself as
reference, moved by k HR px: PSNR against unrelated, first-layer end-point errors and |learned
offset|). Prints Markdown tables; writes OUT/probe.json, OUT/probe.md and OUT/probe_shift.png.

--every_checkpoint probes every saved checkpoint of the workdir in step order (a training curve):
OUT/curve.json, OUT/curve.md, and TensorBoard scalars `probe/<setting>/...` in OUT (with clu
installed). Output files are never replaced without --overwrite (checked before any compute).
Exit status: 0 done, 1 error (one line). Old spellings, accepted for one release with a warning
line: --checkpoint_step N (now --checkpoint N), --best (--checkpoint best).
"""
from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

from absl import flags

from ssen_jax.core import cli
from ssen_jax.data import files

FLAGS = flags.FLAGS
USAGE = """Which part of a RefSR model's reference gain comes from which part of its alignment.

  python -m ssen_jax.probe_reference --workdir W --out_dir W/probe [--checkpoint best]
  python -m ssen_jax.probe_reference --workdir W --out_dir W/probe_curve --every_checkpoint \\
      --settings full,no_learned --shifts 0,2,4,8
  (also the console command ssen-probe-reference)
Writes OUT_DIR/probe.json, probe.md, probe_shift.png (--every_checkpoint: curve.json, curve.md)."""


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  from ssen_jax.eval import probe  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Training workdir of an SSEN RefSR model.')
  cli.define_checkpoint_flag(files=False)
  flags.DEFINE_bool('every_checkpoint', False, 'Probe every saved checkpoint (a curve).')
  flags.DEFINE_string('dataset_dir', None, 'CUFED5-style folder (default: the demo evaluation '
                      'set for demo runs, else the config\'s data.eval_dir).')
  flags.DEFINE_string('out_dir', None, 'Folder for the JSON, Markdown and figure.')
  flags.DEFINE_list('settings', list(probe.SETTINGS), 'Test-time settings to run.')
  flags.DEFINE_list('shifts', [str(k) for k in probe.SHIFTS], 'Shift probe: HR-pixel shifts '
                    '(diagonal); empty: no shift probe.')
  flags.DEFINE_bool('no_table', False, 'Skip the per-level table (shift probe only).')
  flags.DEFINE_integer('scale', 4, 'SR factor.')
  flags.DEFINE_bool('overwrite', False, 'Replace existing output files.')
  cli.deprecated_alias('checkpoint_step', 'checkpoint', parser=flags.IntegerParser())
  flags.mark_flags_as_required(['workdir', 'out_dir'])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _log(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _finite(tree):
  """NaN -> None, so that the JSON is strict (NaN marks a shift with no valid position)."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_finite(v) for v in tree]
  return None if isinstance(tree, float) and tree != tree else tree


def _write_text(path: pathlib.Path, text: str) -> None:
  """Temporary file in the same folder, then rename."""
  files.write_text_atomic(path, text)


def default_dataset_dir(config) -> str:
  """The demo's evaluation folder for demo runs (built if missing), else data.eval_dir."""
  if config.data.get('demo', False):
    from ssen_jax.data import demo_data  # pylint: disable=g-import-not-at-top
    root = demo_data.default_root(config.data.get('demo_dir', ''))
    return str(demo_data.build_demo_data(root).eval_dir)
  return config.data.get('eval_dir', '')


def _check_outputs(out_dir: pathlib.Path, names: Sequence[str], overwrite: bool) -> None:
  from ssen_jax.data import images  # pylint: disable=g-import-not-at-top
  try:
    images.check_writable_folder(out_dir, create=True)
  except OSError as e:
    _fail(f'cannot write in --out_dir {out_dir}: {e.strerror or e}')
  taken = [n for n in names if (out_dir / n).exists()]
  if taken and not overwrite:
    _fail(f'--out_dir {out_dir} already holds {", ".join(taken)}; pass --overwrite to replace')


def _parse_shifts(values: Sequence[str]) -> list[int]:
  try:
    shifts = [int(v) for v in values if v.strip()]
  except ValueError:
    _fail(f'--shifts must be whole HR pixels >= 0, got {",".join(values)}')
  if any(k < 0 for k in shifts):
    _fail(f'--shifts must be whole HR pixels >= 0, got {",".join(values)}')
  return shifts


def curve_rows(step: int, results: dict) -> dict:
  """Flat scalars of one checkpoint's probe: {'probe/<setting>/<name>': value}."""
  out = {}
  for name, r in results['settings'].items():
    if not r:
      continue
    for key in ('ref_gain', 'oracle', 'unrelated'):
      if key in r:
        out[f'probe/{name}/{key}'] = r[key]
    if 'levels' in r:
      out[f'probe/{name}/XH'] = r['levels']['XH']
    if 'shift' in r:
      s = r['shift']
      for i, k in enumerate(s['shifts']):
        out[f'probe/{name}/shift{k}_gain'] = s['psnr'][i] - r['unrelated']
        out[f'probe/{name}/shift{k}_epe'] = s['epe_total'][i]
        out[f'probe/{name}/shift{k}_learned_abs'] = s['learned_abs'][i]
  return out


def _curve_markdown(curve: list[dict]) -> str:
  from ssen_jax.eval import tables  # pylint: disable=g-import-not-at-top
  keys = sorted({k for row in curve for k in row['scalars']})
  header = ['step'] + [k.removeprefix('probe/') for k in keys]
  rows = [[row['step']] + [f'{row["scalars"][k]:.3f}' if k in row['scalars'] else ''
                           for k in keys] for row in curve]
  return '\n'.join(tables.markdown_table(header, rows))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  from ssen_jax.core import checkpointing  # pylint: disable=g-import-not-at-top
  from ssen_jax.eval import probe  # pylint: disable=g-import-not-at-top
  from ssen_jax.eval import protocol  # pylint: disable=g-import-not-at-top
  bad = [s for s in FLAGS.settings if s not in probe.SETTINGS]
  if bad or not FLAGS.settings:
    _fail(f'--settings takes some of {",".join(probe.SETTINGS)}, got {",".join(FLAGS.settings)}')
  shifts = _parse_shifts(FLAGS.shifts)
  if FLAGS.no_table and not shifts:
    _fail('--no_table with no --shifts leaves nothing to measure')
  step, best = cli.checkpoint_choice(FLAGS.checkpoint)
  if step is not None and not step.isdigit():
    _fail(f'--checkpoint takes a step of --workdir, best or latest here, got {step}')
  step = None if step is None else int(step)
  if FLAGS.every_checkpoint and FLAGS.checkpoint is not None:
    _fail('--every_checkpoint probes every checkpoint: drop --checkpoint')
  try:
    config = checkpointing.read_config(FLAGS.workdir)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if config.model.variant != 'ssen':
    _fail(f'{FLAGS.workdir} holds a {config.model.variant!r} model; the probe needs an SSEN '
          'RefSR model (variant ssen)')
  out_dir = pathlib.Path(FLAGS.out_dir)
  names = (['curve.json', 'curve.md'] if FLAGS.every_checkpoint else
           ['probe.json', 'probe.md'] + (['probe_shift.png'] if shifts else []))
  _check_outputs(out_dir, names, FLAGS.overwrite)
  dataset_dir = FLAGS.dataset_dir or default_dataset_dir(config)
  if not dataset_dir:
    _fail('no --dataset_dir given and the workdir\'s config names no data.eval_dir')
  try:
    examples = protocol.load_dataset('cufed5', dataset_dir, FLAGS.scale)
  except ValueError as e:
    _fail(str(e))

  from ssen_jax.core import compilation_cache  # pylint: disable=g-import-not-at-top
  from ssen_jax.inference import restore  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()
  if FLAGS.every_checkpoint:
    steps = checkpointing.checkpoint_steps(FLAGS.workdir)
    if not steps:
      _fail(f'workdir {FLAGS.workdir} holds no checkpoint (has training run?)')
  else:
    steps = [step]
  curve, writer = [], None
  if FLAGS.every_checkpoint:
    try:
      from ssen_jax.data import tf_env  # noqa: F401  pylint: disable=g-import-not-at-top
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      writer = metric_writers.create_default_writer(str(out_dir), just_logging=False)
    except ImportError:
      _log('clu is not installed: no TensorBoard scalars (curve.json and curve.md only)')
  for step in steps:
    try:
      gen = restore.load_generator(FLAGS.workdir, step, best)
    except (FileNotFoundError, ValueError) as e:
      _fail(str(e))
    if gen.scale != FLAGS.scale:
      _fail(f'the model in {FLAGS.workdir} is x{gen.scale}, but --scale is {FLAGS.scale}')
    _log(f'probing step {gen.step} of {FLAGS.workdir} on {dataset_dir} ({len(examples)} groups)')
    try:
      results = probe.run_probe(gen.model, gen.params, examples, scale=gen.scale,
                                settings=FLAGS.settings, shifts=shifts, table=not FLAGS.no_table,
                                log_fn=_log)
    except ValueError as e:
      _fail(str(e))
    results.update(workdir=FLAGS.workdir, step=gen.step, dataset_dir=dataset_dir,
                   match_radius=int(gen.config.model.match_radius),
                   learned_offsets_trained=bool(gen.config.model.get('learned_offsets', True)))
    title = (f'Reference-use probe: {FLAGS.workdir} step {gen.step} on {dataset_dir} '
             f'(match_radius {results["match_radius"]})')
    if FLAGS.every_checkpoint:
      scalars = curve_rows(gen.step, results)
      curve.append({'step': gen.step, 'scalars': scalars, 'results': results})
      if writer:
        writer.write_scalars(gen.step, scalars)
        writer.flush()
      _write_text(out_dir / 'curve.json', json.dumps(_finite(curve), indent=2))
      _write_text(out_dir / 'curve.md', _curve_markdown(curve) + '\n')
      print(f'step {gen.step}: ' + ', '.join(f'{k.removeprefix("probe/")} {v:.3f}'
                                             for k, v in scalars.items()
                                             if k.endswith(('ref_gain', 'shift2_gain',
                                                            'shift4_gain', 'shift2_epe'))))
      continue
    text = probe.format_tables(results, title=title)
    print(text)
    _write_text(out_dir / 'probe.json', json.dumps(_finite(results), indent=2))
    _write_text(out_dir / 'probe.md', text + '\n')
    if shifts:
      probe.shift_figure(results, out_dir / 'probe_shift.png',
                         title=f'{pathlib.Path(FLAGS.workdir).name}, step {gen.step}: '
                               'HR moved by k px as reference')
  if writer:
    writer.close()


def run() -> None:
  """The console command `ssen-probe-reference` (the same as `python -m ssen_jax.probe_reference`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
