r"""Deprecated alias: the old TFRecord writer's command line, now preparing the TFDS dataset.

  python -m ssen_jax.data_prep.convert --dataset cufed --input_dir CUFED --output_dir /data/tfds
  # does what this does:
  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir CUFED \
      --tfds_data_dir /data/tfds

TFDS is the one training data format (`config.data.tfds_name`, `config.data.tfds_data_dir`); the
hand-built TFRecord shards this command used to write, and their reader, are gone. The alias keeps
old command lines working: --output_dir becomes the TFDS data folder (tfds_build's --tfds_data_dir),
--input_dir the raw folder (its --dataset_dir), and each layout a builder (`LAYOUT_TO_TFDS`):

  cufed   ssen_cufed, split train
  cufed5  ssen_cufed5, split test
  div2k   ssen_div2k, split train; --input_dir may be the DIV2K_train_HR folder itself (the old
          layout: a link to it named as ssen_div2k expects is made in a temporary folder) or the
          folder holding it (ssen_div2k's own layout)
  folder  ssen_sr_folder/other, split test

One deprecation line goes to stderr. --num_shards and --num_workers are accepted and ignored: TFDS
chooses its own files and every host reads an even range of examples (`tfds.even_splits`), so no
shard count has to suit the host count, and the builders use every CPU. --name, --skip_bad,
--overwrite and a --tile_size other than the layout's default have no TFDS counterpart and are
refused with one line. Exit status 0, or 1 with one line (`error: ...`).
"""
import os
import pathlib
import shlex
import sys
import tempfile
from collections.abc import Sequence

from absl import flags

from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
from ssen_jax.core import cli
from ssen_jax.data import datasets
from ssen_jax.data_prep import layouts
from ssen_jax.data_prep import tfds_build

FLAGS = flags.FLAGS
USAGE = """Deprecated alias: the old TFRecord writer's flags, preparing the TFDS dataset instead.

  python -m ssen_jax.data_prep.convert --dataset cufed --input_dir CUFED --output_dir /data/tfds
  is python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir CUFED \\
      --tfds_data_dir /data/tfds (use that). Training reads TFDS datasets only."""

# The old --dataset layouts -> (TFDS dataset, its split).
LAYOUT_TO_TFDS = {'cufed': ('ssen_cufed', 'train'), 'cufed5': ('ssen_cufed5', 'test'),
                  'div2k': ('ssen_div2k', 'train'), 'folder': ('ssen_sr_folder/other', 'test')}


def define_flags() -> None:
  """Command-line flags (those of the old writer), defined only when run as a script."""
  flags.DEFINE_enum('dataset', None, list(LAYOUT_TO_TFDS), 'Raw dataset layout: ' + ', '.join(
      f'{k} -> {v}' for k, (v, _) in LAYOUT_TO_TFDS.items()) + '.')
  flags.DEFINE_string('input_dir', None, 'Folder with the raw dataset (tfds_build --dataset_dir).')
  flags.DEFINE_string('output_dir', None, 'The TFDS data folder (tfds_build --tfds_data_dir).')
  flags.DEFINE_integer('num_shards', None, 'Ignored: TFDS chooses its files, and every host '
                       'reads an even range of examples whatever their number.')
  flags.DEFINE_integer('num_workers', None, 'Ignored: the builders use every CPU.')
  flags.DEFINE_string('name', None, 'Refused: the TFDS dataset is named by --dataset.')
  flags.DEFINE_bool('skip_bad', False, 'Refused: the TFDS build stops at an unreadable image.')
  flags.DEFINE_integer('tile_size', None, 'Refused unless the layout\'s default (div2k: 480).')
  flags.DEFINE_bool('overwrite', False, 'Refused: a prepared TFDS dataset is reused as it is.')
  flags.mark_flags_as_required(['dataset', 'input_dir', 'output_dir'])


def convert(dataset: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike):
  """Prepares the TFDS dataset of an old `--dataset` layout, like `tfds_build.prepare`.

  Args:
    dataset: a key of `LAYOUT_TO_TFDS` ('cufed', 'cufed5', 'div2k', 'folder').
    input_dir: the raw folder (for 'div2k' also the DIV2K_train_HR folder itself).
    output_dir: the TFDS data folder.

  Returns:
    (the prepared builder, the split that holds the examples).

  Raises:
    datasets.DatasetError: unknown layout, missing or wrong folder, unreadable image (one line).
  """
  if dataset not in LAYOUT_TO_TFDS:
    raise datasets.DatasetError(f'unknown --dataset {dataset!r}: expected one of '
                                f'{", ".join(LAYOUT_TO_TFDS)}')
  name, split = LAYOUT_TO_TFDS[dataset]
  input_dir = pathlib.Path(input_dir)
  if not input_dir.is_dir():
    raise datasets.DatasetError(f'--input_dir {input_dir} is not a folder')
  if dataset == 'div2k' and not (input_dir / 'DIV2K_train_HR').is_dir():
    # The old layout (the image folder itself): ssen_div2k sees it under the name it expects, so
    # the prepared dataset, its source_sha256 included, is the one of ssen_div2k's own layout.
    with tempfile.TemporaryDirectory(prefix='ssen_div2k-') as manual:
      link = pathlib.Path(manual) / 'DIV2K_train_HR'
      link.symlink_to(input_dir.resolve(), target_is_directory=True)
      return tfds_build.prepare(name, manual, output_dir), split
  return tfds_build.prepare(name, input_dir, output_dir), split


def _refused(dataset: str) -> str | None:
  """The one line for an old flag without a TFDS counterpart, else None."""
  tile = layouts.DEFAULT_TILE_SIZE.get(dataset, 0)
  if FLAGS.name is not None:
    return '--name: the TFDS dataset is named by --dataset (' + LAYOUT_TO_TFDS[dataset][0] + ')'
  if FLAGS.skip_bad:
    return '--skip_bad: the TFDS build stops at an unreadable image; remove it and rerun'
  if FLAGS.tile_size is not None and FLAGS.tile_size != tile:
    return f'--tile_size {FLAGS.tile_size}: the TFDS dataset of {dataset} uses {tile} (0: whole)'
  if FLAGS.overwrite:
    return ('--overwrite: a prepared TFDS dataset is reused as it is; delete its folder '
            '(DATA_DIR/NAME/VERSION) to prepare it again')
  return None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    sys.exit(1)
  dataset = FLAGS.dataset
  refused = _refused(dataset)
  if refused:
    print(f'error: {refused}', file=sys.stderr)
    sys.exit(1)
  name = LAYOUT_TO_TFDS[dataset][0]
  ignored = [f'--{f}' for f in ('num_shards', 'num_workers') if FLAGS[f].present]
  print('note: data_prep.convert is a deprecated alias now; it runs python -m '
        f'ssen_jax.data_prep.tfds_build --tfds_name {name} --dataset_dir '
        f'{shlex.quote(FLAGS.input_dir)} --tfds_data_dir {shlex.quote(FLAGS.output_dir)} (TFRecord '
        'shards are no longer written' + (f'; {", ".join(ignored)} ignored' if ignored else '')
        + ')', file=sys.stderr)
  try:
    builder, split = convert(dataset, FLAGS.input_dir, FLAGS.output_dir)
  except datasets.DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  splits = ', '.join(f'{s}: {info.num_examples} examples'
                     for s, info in builder.info.splits.items())
  print(f'{builder.info.full_name} in {builder.data_dir} ({splits})')
  if split == 'train':
    print(f'Train with --config.data.tfds_name={name} '
          f'--config.data.tfds_data_dir={shlex.quote(FLAGS.output_dir)}')


def run() -> None:
  """`python -m ssen_jax.data_prep.convert` (no console script: an alias kept for old scripts)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
