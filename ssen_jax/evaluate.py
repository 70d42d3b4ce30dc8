r"""Evaluates an SR method on a benchmark folder or CUFED5 with the published protocol.

  python -m ssen_jax.evaluate --method bicubic --dataset_dir /data/Set5
  python -m ssen_jax.evaluate --method bicubic --layout cufed5 --dataset_dir CUFED5 \
      --out bicubic_cufed5.json
  python -m ssen_jax.evaluate --workdir W --layout cufed5 --dataset_dir CUFED5 \
      [--checkpoint best] [--out_dir DIR]

Protocol (`ssen_jax.eval.protocol`, docs/conventions.md): LR = MATLAB bicubic imresize rounded to
uint8; SR rounded to uint8; PSNR/SSIM on BT.601 Y for three-channel files (single-channel files:
their own channel), `scale` pixels shaved per border. A model is restored from --workdir
(`ssen_jax.inference.restore`) and scored per similarity level with the reference controls on
CUFED5-style sets, beside bicubic. One line per image on stderr, counted i/N.

--out_dir DIR writes every SR image scored as DIR/<group>_<level>.png (level: XH ... XL,
oracle, unrelated; `all` on benchmark folders; `bicubic` for the baseline), never over existing
files unless --overwrite (checked before any compute). On a benchmark folder <group> is the file
name without its suffix, so a folder holding files that differ only in their suffix (a.png and
a.jpg) is refused with --out_dir before anything is read: their images would overwrite each
other.

Old spellings, accepted for one release with a warning line: --dataset (now --layout),
--output_json (--out), --save_images (--out_dir), --checkpoint_step N (--checkpoint N), --best
(--checkpoint best).
"""
import os
import pathlib
import sys
from collections.abc import Sequence

from absl import flags
from PIL import Image

from ssen_jax.core import cli
from ssen_jax.data import datasets
from ssen_jax.data import files
from ssen_jax.data import images
from ssen_jax.eval import protocol
from ssen_jax.eval import tables

FLAGS = flags.FLAGS
USAGE = """Scores an SR method (bicubic or a trained model) with the published protocol.

  python -m ssen_jax.evaluate --method bicubic --dataset_dir /data/Set5
  python -m ssen_jax.evaluate --workdir W --layout cufed5 --dataset_dir /data/CUFED5 \\
      [--checkpoint best] [--out W/cufed5.json] [--out_dir W/cufed5_sr]
  (also the console command ssen-evaluate)"""


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (importers keep their own flags)."""
  flags.DEFINE_enum('method', None, ['bicubic', 'model'],
                    'SR method to evaluate (default: model with --workdir, else bicubic).')
  flags.DEFINE_string('workdir', None, 'Training workdir of the model to evaluate.')
  cli.define_checkpoint_flag()
  flags.DEFINE_string('config', None, 'FILE[:variant] giving the architecture of a .pth.')
  flags.DEFINE_string('dataset_dir', None, 'Folder holding the evaluation images.')
  flags.DEFINE_enum('layout', 'folder', ['folder', 'cufed5'], 'folder: HR images directly in '
                    '--dataset_dir; cufed5: XXX_0.png HR + XXX_1..5.png refs.')
  flags.DEFINE_integer('scale', 4, 'SR factor (also the border shave).')
  flags.DEFINE_string('out', None, 'File for the results as JSON (checked before any compute).')
  flags.DEFINE_string('out_dir', None, 'Folder for every SR image scored, as '
                      '<group>_<level>.png (group: the file stem).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file or images in --out_dir.')
  cli.deprecated_alias('checkpoint_step', 'checkpoint', parser=flags.IntegerParser())
  cli.deprecated_alias('dataset', 'layout')
  cli.deprecated_alias('output_json', 'out')
  cli.deprecated_alias('save_images', 'out_dir')
  flags.mark_flag_as_required('dataset_dir')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def check_output_file(path: str, overwrite: bool) -> None:
  """Fails before any compute if `path` exists (without `overwrite`) or its folder cannot take
  a file."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    _fail(f'--out {path} is a folder')
  if os.path.exists(path) and not overwrite:
    _fail(f'--out {path} exists; pass --overwrite to replace it')
  if not os.path.isdir(folder):
    _fail(f'folder {folder} of --out does not exist')
  try:
    images.check_writable_folder(folder)
  except OSError as e:
    _fail(f'cannot write in {folder} (--out): {e.strerror or e}')


def _write_json(path: str, results: dict) -> None:
  """Temporary file in the same folder, then rename: an existing file is never left truncated."""
  try:
    files.write_json_atomic(path, results)
  except OSError as e:
    _fail(f'cannot write {path}: {e}')


def check_distinct_names(layout: str, dataset_dir: str) -> None:
  """Fails before anything is read if two files of a benchmark folder share a stem (a.png and
  a.jpg): their --out_dir files, named by the stem, would overwrite each other. CUFED5 group
  ids are distinct by construction."""
  if layout != 'folder':
    return
  from ssen_jax.inference import folder as folder_lib  # Light: no JAX.
  try:
    clash = folder_lib.colliding_stems(datasets.list_images(dataset_dir))
  except datasets.DatasetError as e:
    _fail(str(e))
  if clash:
    stem, names = next(iter(clash.items()))
    _fail(f'--dataset_dir {dataset_dir} holds {len(clash)} name(s) whose --out_dir files '
          f'would collide ({" and ".join(names)} -> {stem}_<level>.png); rename them or move one '
          'to another folder')


def check_out_dir(folder: str, examples: list[dict], overwrite: bool) -> pathlib.Path:
  """Creates --out_dir and fails before any compute if it cannot take files or already holds
  images of these examples (without `overwrite`)."""
  path = pathlib.Path(folder)
  try:
    images.check_writable_folder(path, create=True)
  except OSError as e:
    _fail(f'cannot write in --out_dir {path}: {e.strerror or e}')
  if not overwrite:
    names = {ex['name'] for ex in examples}
    clash = sorted(p.name for p in path.glob('*.png') if p.stem.rsplit('_', 1)[0] in names)
    if clash:
      _fail(f'--out_dir {path} already holds {len(clash)} of these images ({clash[0]}, ...); '
            'pass --overwrite to replace them')
  return path


def image_saver(folder: pathlib.Path | None, suffix: str = ''):
  """save_fn(name, sr_uint8) writing folder/<name><suffix>.png, or None."""
  if folder is None:
    return None

  def save(name, sr):
    try:
      images.save_png_atomic(Image.fromarray(sr), folder / f'{name}{suffix}.png')
    except OSError as e:
      _fail(f'cannot write {folder / f"{name}{suffix}.png"}: {e}')

  return save


def evaluate_workdir(examples: list[dict], *, scale: int, checkpoint: str | None = None,
                     save_dir: pathlib.Path | None = None) -> tuple[str, dict]:
  """Scores the model of --workdir / --checkpoint beside bicubic; returns a paper-style table
  and the JSON."""
  from ssen_jax.core import compilation_cache  # JAX and the models: only for model evaluation.
  from ssen_jax.inference import restore
  compilation_cache.enable()  # ~/.cache/ssen_jax/jax_cache, or $SSEN_JAX_CACHE_DIR.
  try:
    path, best = cli.checkpoint_choice(checkpoint)
    gen = restore.generator_from_flags(FLAGS.workdir, path, FLAGS.config, best)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if gen.scale != scale:
    _fail(f'the model in {FLAGS.workdir or checkpoint} is x{gen.scale}, but --scale is {scale}')
  model = protocol.evaluate_model(examples, gen.sr_fn, gen.params, scale=scale,
                                  uses_ref=gen.uses_ref,
                                  log_fn=lambda line: print(line, file=sys.stderr),
                                  save_fn=image_saver(save_dir))
  bicubic = protocol.evaluate_examples(examples, protocol.bicubic_sr_fn(scale), scale=scale,
                                       save_fn=image_saver(save_dir, '_bicubic'))
  name = f'{gen.config.model.variant} (step {gen.step})'
  per_level = FLAGS.layout == 'cufed5'
  table = tables.paper_table([('Bicubic', bicubic), (name, model)], scale=scale,
                             per_level=per_level)
  title = (f'### {name} x{scale} on {FLAGS.dataset_dir} '
           f'({"CUFED5-style, one reference per level" if per_level else "benchmark folder"})')
  results = dict(tables.model_results_json(model, bicubic), workdir=FLAGS.workdir, step=gen.step,
                 checkpoint=checkpoint, variant=gen.config.model.variant)
  return f'{title}\n\n{table}', results


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  scale = FLAGS.scale
  if scale < 1:
    _fail(f'--scale must be >= 1, got {scale}')
  checkpoint = FLAGS.checkpoint
  method = FLAGS.method or ('model' if FLAGS.workdir or checkpoint else 'bicubic')
  path = cli.checkpoint_choice(checkpoint)[0]
  if method == 'model' and not FLAGS.workdir and (path is None or path.isdigit()):
    _fail('--method=model needs --workdir (or --checkpoint naming a .pth file or a folder '
          'written by convert_torch)')
  if FLAGS.out:
    check_output_file(FLAGS.out, FLAGS.overwrite)
  if FLAGS.out_dir:
    check_distinct_names(FLAGS.layout, FLAGS.dataset_dir)
  try:
    examples = protocol.load_dataset(FLAGS.layout, FLAGS.dataset_dir, scale)
  except datasets.DatasetError as e:
    _fail(str(e))
  save_dir = check_out_dir(FLAGS.out_dir, examples, FLAGS.overwrite) if FLAGS.out_dir else None
  if method == 'model':
    table, results = evaluate_workdir(examples, scale=scale, checkpoint=checkpoint,
                                      save_dir=save_dir)
    print(table)
  else:
    try:
      results = protocol.evaluate_examples(
          examples, protocol.bicubic_sr_fn(scale), scale=scale,
          log_fn=lambda line: print(line, file=sys.stderr),
          save_fn=image_saver(save_dir, '_bicubic'))
    except ValueError as e:
      _fail(str(e))
    title = f'{method} x{scale} on {FLAGS.dataset_dir} ({FLAGS.layout})'
    print(tables.per_image_table(results, title=title, scale=scale))
  results.update(method=method, layout=FLAGS.layout, dataset_dir=FLAGS.dataset_dir,
                 scale=scale, protocol=tables.protocol_line(scale))
  if FLAGS.out:
    _write_json(FLAGS.out, results)


def run() -> None:
  """The console command `ssen-evaluate` (the same as `python -m ssen_jax.evaluate`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
