"""TensorFlow Datasets builders for the SR datasets (all from folders on disk: nothing downloads).

| builder | split | raw folder (`--dataset_dir`) | features |
|---|---|---|---|
| `ssen_cufed` | train | CUFED training pairs: `input/NAME.png`, `ref/NAME.png` | name, hr, ref |
| `ssen_cufed5` | test | CUFED5: `XXX_0.png` (HR), `XXX_1.png` .. `XXX_5.png` (XH .. XL) | name, hr, refs |
| `ssen_sr_folder/CONFIG` | test | a benchmark folder of HR images (Set5, Set14, B100, ...) | name, hr |
| `ssen_div2k` | train[, validation] | `DIV2K_train_HR/0001.png ..` [and `DIV2K_valid_HR/`] | name, hr |
| `ssen_demo` | train | the demo folder of `ssen_jax.data.demo_data` (`train_raw/input`, `train_raw/ref`) | name, hr, ref |

Images are stored as PNG bytes by the rules of `layouts.process_job` ( RGB 8-bit PNG sources byte for byte, anything else converted to RGB uint8;
small CUFED references padded by symmetric reflection; DIV2K cut into 480x480 tiles). Examples are
written in sorted-name order (`disable_shuffling`), so a host's share (`tfds.even_splits`) and
therefore every training batch depend only on the data, the seed, the step and the host. A wrong
layout stops before anything is written, with one line (`DatasetError`) saying what was expected.

Metadata: `source_files` (number of files read) and `source_sha256` (over every source file's
relative path and bytes, in sorted order), so that a prepared dataset names exactly what it was
built from; TFDS adds its own (splits, example counts, shard lengths, features).
"""
import hashlib
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence

from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
import numpy as np
import tensorflow_datasets as tfds

from ssen_jax.core import progress as progress_lib
from ssen_jax.data import datasets
from ssen_jax.data import demo_data
from ssen_jax.data_prep import layouts

_HOMEPAGE_SRNTT = 'https://github.com/ZZUTK/SRNTT'
_DIV2K_TILE = layouts.DEFAULT_TILE_SIZE['div2k']
_PARALLEL_MIN_JOBS = 256  # Below this, worker processes cost more than they save.
_PROGRESS_LINES = 20  # Progress lines per split (and one for its last image).


def _image() -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png')


def _features(kind: str) -> tfds.features.FeaturesDict:
  feats = {datasets.FEATURE_NAME: tfds.features.Text(), datasets.FEATURE_HR: _image()}
  if kind == layouts.PAIR:
    feats[datasets.FEATURE_REF] = _image()
  elif kind == layouts.CUFED5:
    feats[datasets.FEATURE_REFS] = tfds.features.Sequence(_image(), length=5)
  return tfds.features.FeaturesDict(feats)


def source_checksum(jobs: Sequence[layouts.Job], root: pathlib.Path) -> tuple[int, str]:
  """(number of files, sha256 over each file's path relative to `root` and its bytes)."""
  digest = hashlib.sha256()
  files = sorted({p for job in jobs for p in job.paths})
  for path in files:
    digest.update(os.fsencode(os.path.relpath(path, root)) + b'\0')
    digest.update(path.read_bytes())
  return len(files), digest.hexdigest()


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def generate(jobs: Sequence[layouts.Job], tile_size: int = 0,
             num_workers: int | None = None, *, name: str = 'images',
             log: Callable[[str], None] | None = _stderr) -> Iterator[tuple[str, dict]]:
  """(key, example) for every job in order; a bad image stops with a one-line DatasetError.

  Progress: about _PROGRESS_LINES lines `[i/N] NAME (E s elapsed, ETA T s)` through `log`
  (stderr by default; None: silent)."""
  num_workers = num_workers or os.cpu_count() or 1
  report = progress_lib.Progress(len(jobs))
  every = max(1, -(-len(jobs) // _PROGRESS_LINES))
  work = [(job, tile_size) for job in jobs]
  pool = None
  try:
    if num_workers > 1 and len(work) >= _PARALLEL_MIN_JOBS:
      pool = multiprocessing.get_context('spawn').Pool(num_workers)
      results = pool.imap(layouts.process_job, work,
                          chunksize=max(1, min(16, len(work) // (4 * num_workers))))
    else:
      results = map(layouts.process_job, work)
    for examples, error in results:
      if error:
        raise datasets.DatasetError(f'corrupt or unreadable image: {error}')
      line = report.step(name)
      if log is not None and (report.done % every == 0 or report.done == report.total):
        log(line)
      for example in examples:
        yield example[datasets.FEATURE_NAME], example
  finally:
    if pool is not None:
      pool.terminate()


class _FolderBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared parts: metadata, manual folder, ordered generation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  KIND = layouts.PAIR
  DESCRIPTION = ''
  HOMEPAGE = ''
  # Nothing downloads, so there is no checksums.tsv of download URLs beside the code; TFDS looks
  # for one through `code_path` (an etils resource lookup that needs importlib_resources).
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION, features=_features(self.KIND), homepage=self.HOMEPAGE,
        disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _jobs(self, manual_dir: pathlib.Path) -> dict[str, tuple[list[layouts.Job], int]]:
    """{split: (jobs, tile_size)} found in the manual folder (layout checked, one-line errors)."""
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    splits = self._jobs(manual_dir)
    all_jobs = [job for jobs, _ in splits.values() for job in jobs]
    count, sha = source_checksum(all_jobs, manual_dir)
    self.info.metadata.update(source_files=count, source_sha256=sha)
    return {split: generate(jobs, tile, name=f'{self.name} {split}')
            for split, (jobs, tile) in splits.items()}

  def _generate_examples(self, **kwargs):  # Unused: `_split_generators` returns generators.
    raise NotImplementedError


class SsenCufed(_FolderBuilder):
  """CUFED training pairs of SRNTT (11,871 HR/reference pairs of 160x160)."""

  KIND = layouts.PAIR
  DESCRIPTION = 'CUFED training pairs (HR, reference) of SRNTT, Zhang et al., CVPR 2019.'
  HOMEPAGE = _HOMEPAGE_SRNTT
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the CUFED training set from https://github.com/ZZUTK/SRNTT and pass the folder '
      'holding input/NAME.png (HR) and ref/NAME.png (its reference) as --dataset_dir.')

  def _jobs(self, manual_dir):
    return {'train': (layouts.find_cufed(manual_dir), 0)}


class SsenCufed5(_FolderBuilder):
  """CUFED5 test groups (126 in the release): an HR image and 5 references XH .. XL."""

  KIND = layouts.CUFED5
  DESCRIPTION = 'CUFED5: HR images with 5 references of decreasing similarity (XH, H, M, L, XL).'
  HOMEPAGE = _HOMEPAGE_SRNTT
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download CUFED5 from https://github.com/ZZUTK/SRNTT and pass the folder holding XXX_0.png '
      '(HR) and XXX_1.png .. XXX_5.png (references XH .. XL) as --dataset_dir.')

  def _jobs(self, manual_dir):
    return {'test': (layouts.find_cufed5(manual_dir), 0)}


class SsenSrFolder(_FolderBuilder):
  """A folder of HR images: the SR benchmark sets (one config per set, `other` for any folder)."""

  KIND = layouts.SINGLE
  DESCRIPTION = 'A super-resolution benchmark set: a folder of HR images (PNG, JPEG, BMP, TIFF).'
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f'{n} HR images')
                     for n in ('set5', 'set14', 'b100', 'urban100', 'manga109', 'other')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Pass the folder holding the HR images of the set (directly inside it) as --dataset_dir.')

  def _jobs(self, manual_dir):
    return {'test': (layouts.find_folder(manual_dir), 0)}


class SsenDiv2k(_FolderBuilder):
  """DIV2K HR images (Agustsson & Timofte 2017), cut into 480x480 tiles like data_prep.convert."""

  KIND = layouts.SINGLE
  DESCRIPTION = (f'DIV2K HR images in {_DIV2K_TILE}x{_DIV2K_TILE} tiles (the last row/column '
                 'flush with the border), named STEM_rR_cC.')
  HOMEPAGE = 'https://data.vision.ee.ethz.ch/cvl/DIV2K/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download DIV2K_train_HR.zip (and optionally DIV2K_valid_HR.zip) from '
      'https://data.vision.ee.ethz.ch/cvl/DIV2K/, unzip them into one folder and pass that '
      'folder (holding DIV2K_train_HR/ [and DIV2K_valid_HR/]) as --dataset_dir.')

  def _jobs(self, manual_dir):
    if not (manual_dir / 'DIV2K_train_HR').is_dir():
      raise datasets.DatasetError(f'unexpected layout in {manual_dir}: expected the folder '
                                  'holding DIV2K_train_HR/ (and optionally DIV2K_valid_HR/)')
    splits = {'train': (layouts.find_div2k(manual_dir / 'DIV2K_train_HR'), _DIV2K_TILE)}
    if (manual_dir / 'DIV2K_valid_HR').is_dir():
      splits['validation'] = (layouts.find_div2k(manual_dir / 'DIV2K_valid_HR'), _DIV2K_TILE)
    return splits


class SsenDemo(_FolderBuilder):
  """The embedded demo's training pairs (`ssen_jax.data.demo_data`, built from scikit-image)."""

  VERSION = tfds.core.Version('3.0.0')  # demo_data.DEMO_NAME's v3.
  RELEASE_NOTES = {'3.0.0': 'The ssen_demo_v3 pairs.'}
  KIND = layouts.PAIR
  DESCRIPTION = ('Demo RefSR training pairs (160x160) built by ssen_jax.data.demo_data from '
                 'photos shipped with scikit-image.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Nothing to download: pass the folder written by '
      f'ssen_jax.data.demo_data.build_demo_data (OUT/{demo_data.DEMO_NAME}) as --dataset_dir; '
      '`python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_demo` builds it when omitted.')

  def _jobs(self, manual_dir):
    jobs = layouts.find_cufed(manual_dir / 'train_raw')
    # The order of the demo's earlier round-robin shards (see demo_data.NUM_SHARDS).
    order = sorted(range(len(jobs)), key=lambda i: (i % demo_data.NUM_SHARDS, i))
    return {'train': ([jobs[i] for i in order], 0)}


BUILDERS = {'ssen_cufed': SsenCufed, 'ssen_cufed5': SsenCufed5, 'ssen_sr_folder': SsenSrFolder,
            'ssen_div2k': SsenDiv2k, 'ssen_demo': SsenDemo}
