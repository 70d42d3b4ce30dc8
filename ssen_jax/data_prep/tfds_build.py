r"""Prepares a TFDS dataset of `tfds_builders` from its manual folder; training then reads it by name.

  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir /data/raw/CUFED \
      --tfds_data_dir /data/tfds
  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_sr_folder/set5 --dataset_dir Set5 \
      --tfds_data_dir /data/tfds
  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_demo --tfds_data_dir /data/tfds

then train with `--config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir=/data/tfds` (the
flags carry the config fields' names). (TFDS's own `tfds build` CLI would need apache-beam in
tensorflow-datasets 4.9.10; this command does the same `download_and_prepare` with a
`DownloadConfig(manual_dir=--dataset_dir)` after its checks.)

An already prepared dataset (same name, config and version under --tfds_data_dir) is reused as it
is. Errors the user must fix (missing folder, wrong layout, unreadable image) are one line and exit
1. Old spellings, accepted for one release with a warning line: --dataset (now --tfds_name),
--manual_dir (--dataset_dir), --data_dir (--tfds_data_dir).
"""
import os
import pathlib
import sys
from collections.abc import Sequence

from absl import flags

from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
from ssen_jax.core import cli
from ssen_jax.data import datasets
from ssen_jax.data import demo_data
from ssen_jax.data_prep import tfds_builders

FLAGS = flags.FLAGS
USAGE = """Prepares a TFDS dataset from its raw folder; training then reads it by name.

  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir /data/CUFED \\
      --tfds_data_dir /data/tfds
  python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_demo --tfds_data_dir /data/tfds
  (also the console command ssen-prepare-data)
Then train with --config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir=/data/tfds."""


def define_flags() -> None:
  flags.DEFINE_string('tfds_name', None, 'The dataset (config.data.tfds_name): '
                      + ', '.join(_names()) + '.')
  flags.DEFINE_string('dataset_dir', None, 'The raw dataset folder (ssen_demo: optional, the demo '
                      'data is built under TFDS_DATA_DIR/manual when omitted).')
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data folder the prepared dataset goes to '
                      '(config.data.tfds_data_dir).')
  cli.deprecated_alias('dataset', 'tfds_name')
  cli.deprecated_alias('manual_dir', 'dataset_dir')
  cli.deprecated_alias('data_dir', 'tfds_data_dir')
  flags.mark_flags_as_required(['tfds_name', 'tfds_data_dir'])


def _names() -> list[str]:
  names = []
  for name, cls in tfds_builders.BUILDERS.items():
    configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
    names += [f'{name}/{c}' for c in configs] or [name]
  return names


def prepare(dataset: str, manual_dir: str | os.PathLike | None,
            data_dir: str | os.PathLike) -> 'tfds_builders.tfds.core.DatasetBuilder':
  """Prepares `dataset` ('name' or 'name/config') under `data_dir` unless already there.

  Args:
    dataset: a builder of `tfds_builders.BUILDERS`, 'ssen_sr_folder/set5' style for configs.
    manual_dir: the raw folder (--dataset_dir); None only for 'ssen_demo' (then built under
      data_dir/manual).
    data_dir: the TFDS data folder.

  Returns:
    The prepared builder (`builder.as_dataset(split=...)`, `builder.info`).

  Raises:
    datasets.DatasetError: unknown name, missing or wrong folder, unreadable image (one line).
  """
  name, _, config = dataset.partition('/')
  if name not in tfds_builders.BUILDERS:
    raise datasets.DatasetError(f'unknown dataset {dataset!r}: expected one of '
                                f'{", ".join(_names())}')
  cls = tfds_builders.BUILDERS[name]
  configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
  if configs and config not in configs:
    raise datasets.DatasetError(f'{name} needs a config: {name}/' + f', {name}/'.join(configs))
  builder = cls(data_dir=os.fspath(data_dir), **({'config': config} if config else {}))
  if builder.is_prepared():
    return builder
  if manual_dir is None:
    if name != 'ssen_demo':
      raise datasets.DatasetError(f'{dataset} needs --dataset_dir: {cls.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    manual_dir = demo_data.build_demo_data(pathlib.Path(data_dir) / 'manual').root
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise datasets.DatasetError(f'--dataset_dir {manual_dir} is not a folder')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  except OSError:
    # TFDS writes into a temporary folder and renames it into place; when several processes
    # (the hosts of a run sharing a cache) prepare at once, the later renames fail. The winner's
    # complete dataset is then there to use; any other failure is real.
    again = cls(data_dir=os.fspath(data_dir), **({'config': config} if config else {}))
    if not again.is_prepared():
      raise
    return again
  return builder


def prepare_demo(cache_dir: str | os.PathLike) -> tuple[str, str, demo_data.DemoData]:
  """The demo data under `cache_dir` and its TFDS dataset: (tfds_name, tfds_data_dir, demo)."""
  demo = demo_data.build_demo_data(cache_dir)
  data_dir = pathlib.Path(cache_dir) / 'tfds'
  prepare('ssen_demo', demo.root, data_dir)
  return 'ssen_demo', os.fspath(data_dir), demo


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    sys.exit(1)
  try:
    builder = prepare(FLAGS.tfds_name, FLAGS.dataset_dir, FLAGS.tfds_data_dir)
  except datasets.DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  splits = ', '.join(f'{s}: {info.num_examples} examples' for s, info in builder.info.splits.items())
  print(f'{builder.info.full_name} in {builder.data_dir} ({splits}); source '
        f'{builder.info.metadata.get("source_files")} files, sha256 '
        f'{builder.info.metadata.get("source_sha256")}')


def run() -> None:
  """The console command `ssen-prepare-data` (the same as `python -m ssen_jax.data_prep.tfds_build`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
