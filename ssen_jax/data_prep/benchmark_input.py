r"""Measures training input throughput (examples/s, and per CPU core) for CUFED-shaped batches.

  python -m ssen_jax.data_prep.benchmark_input                      # demo data (160x160 pairs), B = 32
  python -m ssen_jax.data_prep.benchmark_input --tfds_name ssen_cufed --tfds_data_dir /data/tfds \
      --threads 1,4

For each thread count T the tf.data private thread pool is limited to T threads, so examples/s / T
is the cost per core. Prints a Markdown table; asserts nothing (timings vary with the machine).
"""
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence

from absl import flags

from ssen_jax.core import cli

FLAGS = flags.FLAGS
USAGE = """Measures training input throughput (examples/s, and per CPU core), CUFED-shaped.

  python -m ssen_jax.data_prep.benchmark_input                  # the demo data, batch 32
  python -m ssen_jax.data_prep.benchmark_input --tfds_name ssen_cufed --tfds_data_dir /data/tfds
  (also the console command ssen-benchmark-input)"""


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('tfds_name', None, 'A prepared TFDS dataset; default: the demo data.')
  flags.DEFINE_string('tfds_data_dir', None, 'Its TFDS data folder.')
  flags.DEFINE_enum('kind', 'refsr', ['refsr', 'sisr'], 'Record kind.')
  flags.DEFINE_integer('hr_patch', 160, 'HR crop size.')
  flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
  flags.DEFINE_integer('num_batches', 20, 'Batches timed (after 2 warm-up batches).')
  flags.DEFINE_list('threads', None, 'Thread counts to try; default: 1 and all CPUs.')


def measure(tfds_name: str, *, tfds_data_dir: str | None = None, kind: str = 'refsr',
            hr_patch: int = 160, batch_size: int = 32, num_batches: int = 20,
            num_threads: int | None = None) -> float:
  """Examples per second of `create_train_iterator` after two warm-up batches."""
  from ssen_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  it = input_pipeline.create_train_iterator(
      tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, kind=kind, hr_patch=hr_patch, scale=4,
      local_batch_size=batch_size, seed=0, start_step=0, process_index=0, process_count=1,
      num_threads=num_threads)
  for _ in range(2):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * batch_size / (time.perf_counter() - start)


@contextlib.contextmanager
def private_demo_data() -> Iterator[tuple[str, str]]:
  """The demo data's TFDS dataset (name, data_dir), prepared in a fresh private folder
  (tempfile.mkdtemp: mode 0700, an unpredictable name) that is removed afterwards."""
  from ssen_jax.data_prep import tfds_build  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix='ssen_demo-')
  try:
    name, data_dir, _ = tfds_build.prepare_demo(root)
    yield name, data_dir
  finally:
    shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str]) -> None:
  del argv
  name, data_dir = FLAGS.tfds_name, FLAGS.tfds_data_dir
  with contextlib.ExitStack() as stack:
    if name is None:
      name, data_dir = stack.enter_context(private_demo_data())
    _report(name, data_dir)


def _report(name: str, data_dir: str | None) -> None:
  cpus = os.cpu_count() or 1
  threads = [int(t) for t in FLAGS.threads] if FLAGS.threads else sorted({1, cpus})
  print(f'Input pipeline, {FLAGS.kind}, HR {FLAGS.hr_patch}x{FLAGS.hr_patch}, batch '
        f'{FLAGS.batch_size}, TFDS {name} in {data_dir} ({cpus} CPUs visible)\n')
  print('| threads | examples/s | examples/s per thread |\n|---:|---:|---:|')
  for t in threads:
    rate = measure(name, tfds_data_dir=data_dir, kind=FLAGS.kind, hr_patch=FLAGS.hr_patch, batch_size=FLAGS.batch_size,
                   num_batches=FLAGS.num_batches, num_threads=t)
    print(f'| {t} | {rate:.1f} | {rate / t:.1f} |')


def run() -> None:
  """The console command `ssen-benchmark-input` (the same as `python -m ssen_jax.data_prep.benchmark_input`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
