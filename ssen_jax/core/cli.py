r"""What every command shares on its command line: one --help, one --checkpoint, old spellings.

Every command (`python -m ssen_jax.X` and its console script `ssen-...`) starts with
`cli.run(main, USAGE)`:

* `--help` (also `-h`, `-?`, `--helpshort`) prints the command's usage lines, its own flags (a line
  or two each), its exit statuses and its deprecated spellings to stdout, and exits 0: the same
  text for `python -m` and the console script, short enough for one screen. absl's `--helpfull`
  (every flag, absl's own included) is unchanged.
* `deprecated_alias('output_json', 'out')` keeps an old flag name working for one release: it sets
  the new flag (so the command behaves exactly as with the new name), prints one line on stderr
  once the flags are parsed (`warning: --output_json is deprecated; use --out=r.json`), and stays
  out of `--help` (absl's `--helpfull` lists it). The old and the new name together are a usage
  error (one line, exit 1).
* `define_checkpoint_flag()` is the tools' `--checkpoint STEP|best|latest|PATH`, and
  `checkpoint_choice` reads it for `inference.restore`.

The vocabulary itself (which name means what) is in docs/usage.md, "Flag names".
"""
from __future__ import annotations

import shlex
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags

# Flags that this module's functions define (--checkpoint) belong to the command that calls them,
# so that its --help lists them.
flags.disclaim_key_flags()
FLAGS = flags.FLAGS
WIDTH = 80  # Columns of --help; absl's own help uses the same when stdout is not a terminal.
HELP_ARGS = frozenset({'-h', '-help', '--help', '-helpshort', '--helpshort', '-?', '--?'})
EXIT_STATUSES = ('exit status: 0 done; 1 an error or a usage error (one line on stderr); SIGTERM '
                 'kills it (docs/exit_statuses.md).')
CHECKPOINT_HELP = ('Which checkpoint: a step of --workdir, best (the highest eval PSNR), latest '
                   '(the default), a PyTorch .pth file (with --config) or a folder written by '
                   'convert_torch.')
# The deprecated spellings defined in this process, in definition order.
_ALIASES: list[_DeprecatedFlag] = []


class _DeprecatedFlag(flags.Flag):
  """--OLD: checked by its own parser, then sets --NEW (during parsing, so that --NEW's validators
  see it); `check_aliases` prints its warning line once parsing is done."""

  def __init__(self, name: str, target: flags.Flag, parser: Any, value: str | None):
    super().__init__(parser, None, name, None, f'Deprecated spelling of --{target.name} (one '
                     'release).', boolean=isinstance(parser, flags.BooleanParser))
    self.target = target
    self.fixed = value
    self.warning = ''

  def parse(self, argument: Any) -> None:
    self.value = self._parse(argument)  # The old flag's own type check (IllegalFlagValueError).
    self.present += 1
    if self.boolean:
      given = self.fixed if self.value else None
    else:
      given = str(argument)
    if not self.warning:  # The first spelling given is the one the warning quotes.
      if given is None:
        self.warning = f'warning: --no{self.name} is deprecated; leave it out'
      else:
        self.warning = (f'warning: --{self.name} is deprecated; use '
                        f'--{self.target.name}={shlex.quote(given)}')
    if given is not None:
      try:
        self.target.value = self.target.parser.parse(given)
      except (TypeError, ValueError) as e:
        raise flags.IllegalFlagValueError(f'flag --{self.name}={argument}: {e}') from None
      self.target.using_default_value = False


def deprecated_alias(old: str, new: str, *, parser: Any = None, value: str | None = None) -> None:
  """Defines --old as a deprecated spelling of the already defined --new, for one release.

  Args:
    old: the old flag name.
    new: the flag it now sets.
    parser: the old flag's own parser where its type differs from --new's (e.g.
      `flags.IntegerParser()` for an old integer flag that a string flag replaces); its values are
      checked by it and then by --new's.
    value: for an old boolean flag (`--best`): the value --new takes when it is given
      (`--checkpoint=best`); `--noOLD` then changes nothing.
  """
  target = FLAGS[new]
  if value is not None:
    parser = flags.BooleanParser()
  flag = _DeprecatedFlag(old, target, parser or target.parser, value)
  # Registered under this module, not the command's: --help leaves it out, --helpfull lists it.
  flags.DEFINE_flag(flag, module_name=__name__)
  _ALIASES.append(flag)


def define_checkpoint_flag(*, files: bool = True) -> None:
  """--checkpoint STEP|best|latest|PATH, and --best as its deprecated spelling `--checkpoint=best`.

  Args:
    files: whether PATH (a .pth file or a folder written by convert_torch) is accepted; the help
      text says so.
  """
  text = CHECKPOINT_HELP if files else (
      'Which checkpoint of --workdir: a step, best (the highest eval PSNR) or latest (the '
      'default).')
  flags.DEFINE_string('checkpoint', None, text)
  deprecated_alias('best', 'checkpoint', value='best')


def checkpoint_choice(value: str | None) -> tuple[str | None, bool]:
  """--checkpoint -> (checkpoint, best) as `inference.restore.generator_from_flags` takes them.

  'best' -> (None, True); None or 'latest' -> (None, False); a step or a path -> (value, False).
  A folder actually named `best` or `latest` is given as `./best`.
  """
  if value == 'best':
    return None, True
  if value in (None, 'latest'):
    return None, False
  return value, False


def _wrap(text: str, indent: str = '') -> list[str]:
  return textwrap.wrap(text, WIDTH, initial_indent=indent,
                       subsequent_indent=indent + '    ' if indent else '  ',
                       break_long_words=False, break_on_hyphens=False)


def _default_text(flag: flags.Flag) -> str:
  default = flag.default
  if default is None or default is False or default == '' or default == []:
    return ''
  if isinstance(default, (list, tuple)):
    default = ','.join(str(d) for d in default)
  elif default is True:
    default = 'true'  # As --[no]flag reads.
  return f' (default: {default})'


def _flag_lines(flag: flags.Flag) -> list[str]:
  name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
  text = (flag.help or '') + _default_text(flag)  # absl puts an enum's <a|b> before its help.
  return _wrap(f'{name}: {text}', '  ')


def help_text(usage: str, module: str, exit_statuses: str = EXIT_STATUSES) -> str:
  """The --help of the command whose flags `module` (its `__name__`) defined.

  Args:
    usage: a one-line summary and the usage lines, as the command's docstring starts.
    module: the command module's `__name__` ('__main__' under `python -m`).
    exit_statuses: one sentence naming the command's exit statuses.

  Returns:
    The text, without a trailing newline.
  """
  own = FLAGS.get_key_flags_for_module(module)
  lines = usage.strip('\n').splitlines() + ['', 'flags:']
  for flag in own:
    lines += _flag_lines(flag)
  lines += [''] + _wrap(exit_statuses)
  old = [f'--{a.name} (now --{a.target.name}{"=" + a.fixed if a.fixed else ""})'
         for a in _ALIASES if a.target in own]
  if old:
    lines += _wrap('deprecated, accepted until the next release: ' + ', '.join(old))
  lines.append('--helpfull: every flag, absl\'s included. More: docs/usage.md')
  return '\n'.join(lines)


def _asks_for_help(argv: Sequence[str]) -> bool:
  args = list(argv[1:])
  if '--' in args:  # Arguments after `--` are not flags.
    args = args[:args.index('--')]
  return any(arg in HELP_ARGS for arg in args)


def check_aliases() -> None:
  """After parsing: one warning line on stderr per old spelling given, or, where an old spelling
  and its new name were both given, one error line and exit status 1 (a usage error)."""
  for alias in _ALIASES:
    if alias.present and alias.target.present:
      print(f'error: give --{alias.target.name}, not both it and the deprecated --{alias.name}',
            file=sys.stderr)
      sys.exit(1)
  for alias in _ALIASES:
    if alias.present:
      print(alias.warning, file=sys.stderr, flush=True)


def run(main: Callable[[list[str]], Any], usage: str, *, exit_statuses: str = EXIT_STATUSES,
        flags_parser: Callable[[list[str]], Any] = app.parse_flags_with_usage) -> None:
  """`app.run(main)` with the package's --help and the deprecated spellings' checks.

  Args:
    main: the command's main(argv).
    usage: its summary and usage lines (`help_text`).
    exit_statuses: one sentence naming its exit statuses.
    flags_parser: absl's flag parsing (a command may catch more errors, as `main` does for bad
      config overrides).
  """
  module = main.__module__

  def parse(argv: list[str]) -> Any:
    if _asks_for_help(argv):
      print(help_text(usage, module, exit_statuses))
      sys.exit(0)
    rest = flags_parser(argv)
    check_aliases()
    return rest

  app.run(main, flags_parser=parse)
