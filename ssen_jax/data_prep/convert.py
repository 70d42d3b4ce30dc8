r"""Converts raw SR datasets to sharded TFRecord files of PNG-encoded images.

  python -m ssen_jax.data_prep.convert --dataset cufed --input_dir CUFED --output_dir data/cufed \
      --num_shards 64
  python -m ssen_jax.data_prep.convert --dataset div2k --input_dir DIV2K_train_HR --output_dir data/div2k \
      --num_shards 64

Expected input layouts (see data_prep/README.md for where to download each):

  cufed   INPUT/input/NAME.png (160x160 HR) and INPUT/ref/NAME.png (its reference), same names.
  cufed5  INPUT/XXX_0.png (HR) and INPUT/XXX_1.png .. XXX_5.png (references XH .. XL).
  div2k   INPUT/0001.png ... (the DIV2K_train_HR or DIV2K_valid_HR folder itself).
  folder  INPUT/*.{png,jpg,...}: any folder of HR images.

Output: OUTPUT/NAME-00000-of-0000K.tfrecord ... (NAME = --name, default the dataset) and
OUTPUT/NAME.json (counts, features, skipped files). Records are `tf.train.Example`s of BytesLists
(`ssen_jax.data.datasets` defines the keys):

  'name'  example name (utf-8): the file stem, the CUFED5 group id, or STEM_rR_cC for a tile.
  'hr'    PNG, RGB uint8: the HR image (or tile).
  'ref'   PNG, RGB uint8: the reference (cufed only).
  'refs'  5 x PNG, RGB uint8: references XH, H, M, L, XL (cufed5 only).

Choices:
* Examples go to shards round-robin in sorted-name order, so shards differ by at most one example
  and each training host (which reads a disjoint subset of shards) gets a balanced share.
* CUFED references smaller than their HR image (a few in the SRNTT release) are padded at the
  bottom/right by symmetric reflection (edge row/column repeated) up to the HR size; the content
  stays at the top-left, undistorted. Larger references are kept as they are.
* div2k cuts each image into --tile_size tiles (default 480; the last row/column of tiles is flush
  with the image edge, so tiles may overlap slightly): decoding a 480x480 PNG per training crop
  instead of a 2K image makes the input pipeline ~15x cheaper. Random crops then never straddle a
  tile border. --tile_size 0 keeps whole images.
* PNG sources already RGB 8-bit are stored byte-for-byte; anything else (JPEG, grayscale, palette,
  16-bit, alpha) is decoded, converted to RGB uint8 and re-encoded as PNG.
* Existing output of the same NAME is refused unless --overwrite. Shards are written under
  OUTPUT/.NAME.tmp-PID/ and renamed into place only after every image was read. --overwrite
  builds a whole new OUTPUT beside it (new shards and manifest, and hard links to the folder's
  other files) and swaps it in as one folder (`folder_swap`): a reader sees the old output or the
  new one, never new shards under the old manifest; a run killed between the swap's two renames
  leaves the old OUTPUT whole as .OUTPUT.old, which the next run puts back first. An interrupted
  run leaves its partial files only in a temporary folder, which the next run removes.
"""
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app
from absl import flags

from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
from ssen_jax.data_prep import folder_swap
from ssen_jax.data_prep import layouts
from ssen_jax.data import datasets

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_enum('dataset', None, list(layouts.LAYOUTS), 'Raw dataset layout.')
  flags.DEFINE_string('input_dir', None, 'Folder with the raw dataset.')
  flags.DEFINE_string('output_dir', None, 'Folder for the TFRecord shards.')
  flags.DEFINE_integer('num_shards', 8, 'Number of shards; at least the number of training hosts.')
  flags.DEFINE_string('name', None, 'Shard file prefix; default: the --dataset value.')
  flags.DEFINE_bool('skip_bad', False,
                    'Skip corrupt/unreadable images (listed in the summary) instead of stopping.')
  flags.DEFINE_integer(
      'tile_size', None, 'div2k/folder: cut images into tiles of this size (0: whole images). '
      'Default: 480 for div2k, 0 otherwise.')
  flags.DEFINE_bool('overwrite', False, 'Replace shards and manifest of the same --name already '
                    'in --output_dir (also those of another shard count).')
  flags.DEFINE_integer('num_workers', None,
                       'Processes decoding/encoding images; default: the number of CPUs.')
  flags.mark_flags_as_required(['dataset', 'input_dir', 'output_dir'])


class ConvertError(Exception):
  """A problem the user must fix; the message is one line."""


def _tmp_dirs(output_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
  return sorted(output_dir.glob(f'.{name}.tmp-*'))


def _pid_alive(pid: str) -> bool:
  """Whether the run that owns a temporary folder is still running (then leave it alone)."""
  try:
    if int(pid) == os.getpid():  # A reused pid: the folder cannot be from this very run.
      return False
    os.kill(int(pid), 0)
  except (ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  return True


def _existing_shards(output_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
  return sorted(output_dir.glob(f'{name}-?????-of-?????.tfrecord'))


def convert(dataset: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
            num_shards: int, name: str | None = None, skip_bad: bool = False,
            tile_size: int | None = None, num_workers: int = 1, progress: bool = True,
            overwrite: bool = False) -> dict:
  """Converts one dataset; the library form of the command line.

  Args:
    dataset: one of `layouts.LAYOUTS` ('cufed', 'cufed5', 'div2k', 'folder').
    input_dir: the raw dataset folder (layout in the module docstring).
    output_dir: where shards and the manifest go (created if needed).
    num_shards: number of shards K (>= 1, <= number of examples).
    name: shard prefix; default `dataset`.
    skip_bad: skip unreadable images instead of raising.
    tile_size: tile size for div2k/folder (None: the dataset's default, 0: whole images).
    num_workers: processes for decoding/encoding (1: in this process).
    progress: show a progress bar on stderr.
    overwrite: replace existing shards/manifest of `name` (else they are refused, before any
      image is read).

  Returns:
    The manifest dict (also written to OUTPUT/NAME.json), with 'images_per_second'.

  Raises:
    ConvertError: wrong layout, empty folder, bad shard count or (without skip_bad) a bad image.
  """
  name = name or dataset
  if num_shards < 1:
    raise ConvertError(f'--num_shards must be >= 1, got {num_shards}')
  if tile_size is None:
    tile_size = layouts.DEFAULT_TILE_SIZE.get(dataset, 0)
  try:
    jobs = layouts.LAYOUTS[dataset](pathlib.Path(input_dir))
  except datasets.DatasetError as e:
    raise ConvertError(str(e)) from None
  if len(jobs) < num_shards:
    raise ConvertError(f'{len(jobs)} examples found in {input_dir}, fewer than --num_shards '
                       f'{num_shards}: every shard must hold at least one example')
  given_output_dir = output_dir
  output_dir = pathlib.Path(os.path.realpath(output_dir))  # A symlink: its target is replaced.
  folder_swap.recover(output_dir)  # An --overwrite killed half-way: the old folder comes back.
  existing = _existing_shards(output_dir, name) + [
      p for p in [output_dir / f'{name}.json'] if p.exists()]
  if existing and not overwrite:
    raise ConvertError(f'{given_output_dir} already holds {name} output ({len(existing)} files, e.g. '
                       f'{existing[0].name}); pass --overwrite to replace it, or choose another '
                       '--name or --output_dir')
  try:
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output_dir, prefix='.probe-'):
      pass
  except OSError as e:
    raise ConvertError(f'--output_dir {output_dir} is not a writable folder: '
                       f'{e.strerror or e}') from None
  for stale in _tmp_dirs(output_dir, name):  # Left over by an interrupted run.
    if not _pid_alive(stale.name.rsplit('-', 1)[-1]):
      shutil.rmtree(stale, ignore_errors=True)
  if existing:  # --overwrite: a new output folder, swapped in whole at the end.
    try:
      tmp_dir = folder_swap.staging(output_dir)
    except OSError as e:
      raise ConvertError(f'--overwrite builds the new {given_output_dir} beside it, but '
                         f'{output_dir.parent} is not writable: {e.strerror or e}') from None
  else:
    tmp_dir = output_dir / f'.{name}.tmp-{os.getpid()}'
    tmp_dir.mkdir()
  try:
    manifest = _write_shards(jobs, tmp_dir, name, num_shards, skip_bad=skip_bad,
                             tile_size=tile_size, num_workers=num_workers, progress=progress)
    manifest.update(dataset=dataset, input_dir=str(input_dir), tile_size=tile_size)
    with open(tmp_dir / 'manifest.json', 'w') as f:
      json.dump({k: v for k, v in manifest.items() if k != 'images_per_second'}, f, indent=2)
    if existing:
      os.replace(tmp_dir / 'manifest.json', tmp_dir / f'{name}.json')
      own = {p.name for p in existing} | {p.name for p in _tmp_dirs(output_dir, name)}
      folder_swap.carry_over(output_dir, tmp_dir, skip=own)  # Other datasets' files stay.
      try:
        folder_swap.replace(tmp_dir, output_dir)
      except OSError as e:  # E.g. a mount point: nothing was changed.
        raise ConvertError(f'cannot replace {given_output_dir} as one folder ({e.strerror or e}); '
                           'write to a new --output_dir') from None
    else:  # Nothing of NAME there before: shards, then the manifest, each renamed into place.
      for shard in datasets.shard_names(name, num_shards):
        os.replace(tmp_dir / shard, output_dir / shard)
      os.replace(tmp_dir / 'manifest.json', output_dir / f'{name}.json')
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return manifest


def to_tf_example(example: layouts.Example, tf) -> 'tf.train.Example':
  """{key: str | bytes | [bytes]} -> a tf.train.Example of BytesLists (keys sorted)."""
  feature = {}
  for key in sorted(example):
    values = example[key]
    values = [values] if isinstance(values, (str, bytes)) else list(values)
    values = [v.encode() if isinstance(v, str) else v for v in values]
    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _write_shards(jobs: list[layouts.Job], tmp_dir: pathlib.Path, name: str, num_shards: int, *,
                  skip_bad: bool, tile_size: int, num_workers: int, progress: bool) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the writer needs it)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  paths = [tmp_dir / s for s in datasets.shard_names(name, num_shards)]
  writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
  counts = [0] * num_shards
  bad, images, num_records = [], 0, 0
  start = time.perf_counter()
  pool = None
  try:
    work = ((job, tile_size) for job in jobs)
    if num_workers > 1:
      pool = multiprocessing.get_context('spawn').Pool(num_workers)
      # Large chunks amortise the inter-process traffic for small images (CUFED: ~1 ms each).
      chunk = max(1, min(16, len(jobs) // (4 * num_workers)))
      results = pool.imap(layouts.process_job, work, chunksize=chunk)
    else:
      results = map(layouts.process_job, work)
    bar = tqdm(total=len(jobs), file=sys.stderr, unit='ex', disable=not progress, desc=name,
               dynamic_ncols=True)
    for job, (examples, error) in zip(jobs, results):
      bar.update(1)
      images += len(job.paths)
      if error:
        if not skip_bad:
          raise ConvertError(f'corrupt or unreadable image: {error} '
                             '(rerun with --skip_bad to skip such images)')
        bad.append(error)
        continue
      for example in examples:
        shard = num_records % num_shards
        writers[shard].write(to_tf_example(example, tf).SerializeToString())
        counts[shard] += 1
        num_records += 1
    bar.close()
  finally:
    if pool is not None:
      pool.terminate()
    for w in writers:
      w.close()
  seconds = time.perf_counter() - start
  if min(counts) == 0:
    raise ConvertError(f'only {num_records} examples left after skipping {len(bad)} bad images, '
                       f'fewer than --num_shards {num_shards}')
  return {'name': name, 'num_examples': num_records, 'num_shards': num_shards,
          'shards': [p.name for p in paths], 'examples_per_shard': counts,
          'features': layouts.FEATURES[jobs[0].kind], 'num_images_read': images,
          'skipped_bad': bad, 'seconds': seconds, 'images_per_second': images / max(seconds, 1e-9)}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    sys.exit(1)
  workers = FLAGS.num_workers or os.cpu_count() or 1
  try:
    m = convert(FLAGS.dataset, FLAGS.input_dir, FLAGS.output_dir, num_shards=FLAGS.num_shards,
                name=FLAGS.name, skip_bad=FLAGS.skip_bad, tile_size=FLAGS.tile_size,
                num_workers=workers, overwrite=FLAGS.overwrite)
  except ConvertError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  out = pathlib.Path(FLAGS.output_dir)
  print(f'Wrote {m["num_examples"]} examples ({", ".join(m["features"])}) to {m["num_shards"]} '
        f'shards {out / m["name"]}-*-of-{m["num_shards"]:05d}.tfrecord')
  if m['skipped_bad']:
    print(f'Skipped {len(m["skipped_bad"])} bad images:')
    for b in m['skipped_bad']:
      print(f'  {b}')
  else:
    print('Skipped 0 bad images.')
  print(f'Read {m["num_images_read"]} images in {m["seconds"]:.1f} s: '
        f'{m["images_per_second"]:.1f} images/s with {workers} worker(s).')


def run() -> None:
  """The console command `ssen-convert-tfrecords` (the same as `python -m ssen_jax.data_prep.convert`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
