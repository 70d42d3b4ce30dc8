"""Prints whether a workdir's newest checkpoint is complete, for the launchers.

Usage: python launch/checkpoint_state.py WORKDIR   (a local folder or a gs:// path)

A trainer that gets SIGTERM saves a checkpoint and exits with status 143; a shell shows a trainer
killed by SIGTERM (a second one during the save, say) as 143 as well. The launchers therefore do not
take 143 alone as "saved": they ask this script, which prints one line and exits 0 when the newest
step under WORKDIR/checkpoints is complete (Orbax finalized it), 1 when it is not (an interrupted
save, left as `STEP.orbax-checkpoint-tmp*`, or no checkpoint at all), 2 when the folder cannot be
read. Only Orbax and etils are imported (the base install), not ssen_jax.
"""
import re
import sys

_STEP = re.compile(r'(\d+)(\.orbax-checkpoint-tmp.*)?')


def describe(workdir: str) -> tuple[bool, str]:
  """(newest step complete, one line) for `workdir`'s checkpoints folder."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import path as ocp_path  # pylint: disable=g-import-not-at-top
  folder = epath.Path(workdir) / 'checkpoints'
  if not folder.is_dir():
    return False, f'no checkpoint in {workdir}'
  entries = [int(m.group(1)) for p in folder.iterdir() if (m := _STEP.fullmatch(p.name))]
  complete = sorted(ocp_path.step.checkpoint_steps(folder))
  if not entries:
    return False, f'no checkpoint in {workdir}'
  newest = max(entries)
  if complete and complete[-1] == newest:
    return True, f'newest checkpoint: step {newest}, complete'
  latest = f'step {complete[-1]}' if complete else 'none'
  return False, (f'newest checkpoint: step {newest}, NOT complete (an interrupted save); latest '
                 f'complete: {latest}')


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print('usage: python launch/checkpoint_state.py WORKDIR', file=sys.stderr)
    return 2
  try:
    ok, line = describe(argv[1])
  except OSError as e:
    print(f'cannot read the checkpoints of {argv[1]}: {e}')
    return 2
  print(line)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv))
