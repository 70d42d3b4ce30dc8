"""Reporting evaluation results: Markdown tables, one-line summaries and metric-writer scalars.

Every table printed states its protocol first (`protocol_line`), as docs/conventions.md asks.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List

from ssen_jax.eval.protocol import CONTROLS, LEVELS


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str = '') -> List[str]:
  """The lines of a Markdown table.

  Args:
    header: column titles.
    rows: cells (already formatted, or anything `str` accepts), one sequence per row.
    align: one character per column, 'l' (left) or 'r' (right); default: the first column left,
      the others right.

  Returns:
    The header line, the separator line and one line per row.
  """
  align = align or 'l' + 'r' * (len(header) - 1)
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---:' if a == 'r' else '---' for a in align) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines


def protocol_line(scale: int) -> str:
  """One sentence stating the evaluation protocol, printed with every table."""
  return (f'Protocol: x{scale}, LR = MATLAB bicubic imresize (antialiased, a=-0.5) rounded to '
          f'uint8; SR rounded to uint8; PSNR/SSIM on Y (BT.601; single-channel files: own channel), '
          f'shave = {scale} px; SSIM 11x11 Gaussian sigma 1.5, valid; PSNR-RGB same shave.')


def per_image_table(results: dict, *, title: str, scale: int) -> str:
  """Per-image rows of `protocol.evaluate_examples` results and their mean, after the protocol."""
  rows = [(r['name'], f'{r["psnr"]:.3f}', f'{r["ssim"]:.4f}', f'{r["psnr_rgb"]:.3f}')
          for r in results['per_image']]
  rows.append((f'**mean ({results["num_images"]} images)**', f'**{results["psnr"]:.3f}**',
               f'**{results["ssim"]:.4f}**', f'**{results["psnr_rgb"]:.3f}**'))
  return '\n'.join([f'### {title}', '', protocol_line(scale), ''] + markdown_table(
      ('image', 'PSNR-Y (dB)', 'SSIM-Y', 'PSNR-RGB (dB)'), rows))


def paper_table(rows: Sequence[tuple], *, scale: int, per_level: bool) -> str:
  """Paper-style table: Table 3's per-level columns, or Table 2's single PSNR/SSIM column.

  Per-level tables add the controls (oracle, unrelated) and ref_gain = XH - unrelated (dB).

  Args:
    rows: (method name, results of `protocol.evaluate_model` or of `evaluate_examples`) pairs;
      results without levels (bicubic) score the same in every column.
  """
  lines = [protocol_line(scale), '']
  if per_level:
    columns = LEVELS + ('mean',) + CONTROLS
    cells = []
    for name, res in rows:
      by_row = {**res.get('levels', {}), **res.get('controls', {}), 'mean': res}
      gain = res.get('ref_gain')
      cells.append([name] + [f'{by_row.get(c, res)["psnr"]:.2f}/{by_row.get(c, res)["ssim"]:.3f}'
                             for c in columns] + [f'{0.0 if gain is None else gain:+.2f}'])
    lines += markdown_table(('method',) + columns + ('ref_gain',), cells)
    lines += ['', 'oracle: the HR image as its own reference; unrelated: the XH reference of the '
              'next group; ref_gain = PSNR(XH) - PSNR(unrelated).']
  else:
    lines += markdown_table(('method', 'PSNR/SSIM (Y)', 'PSNR-RGB'), [
        (name, f'{res["psnr"]:.2f}/{res["ssim"]:.3f}', f'{res["psnr_rgb"]:.2f}')
        for name, res in rows])
  return '\n'.join(lines)


def describe(results: Dict[str, Any]) -> str:
  """One log line: the mean, each level and control, and ref_gain."""
  line = f'PSNR {results["psnr"]:.3f} dB, SSIM {results["ssim"]:.4f}'
  rows = {**results.get('levels', {}), **results.get('controls', {})}
  if rows:
    line += ' (' + ', '.join(f'{k} {v["psnr"]:.2f}' for k, v in rows.items()) + ')'
  if results.get('ref_gain') is not None:
    line += f', ref_gain {results["ref_gain"]:+.3f} dB'
  return line


def scalar_summary(results: Dict[str, Any], prefix: str = 'eval') -> Dict[str, float]:
  """Flat {name: value} for metric writers: the mean, per level and control, and ref_gain."""
  out = {f'{prefix}/psnr': results['psnr'], f'{prefix}/ssim': results['ssim'],
         f'{prefix}/psnr_rgb': results['psnr_rgb']}
  for name, res in {**results['levels'], **results.get('controls', {})}.items():
    out[f'{prefix}/psnr_{name}'] = res['psnr']
    out[f'{prefix}/ssim_{name}'] = res['ssim']
  if results.get('ref_gain') is not None:
    out[f'{prefix}/ref_gain'] = results['ref_gain']
  return out


def model_results_json(model: Dict[str, Any], bicubic: Dict[str, Any]) -> Dict[str, Any]:
  """The JSON record of a model's `protocol.evaluate_model` results beside bicubic's means."""
  compact = lambda rows: {k: {'psnr': v['psnr'], 'ssim': v['ssim'], 'per_image': v['per_image']}
                          for k, v in rows.items()}
  return {'num_images': bicubic['num_images'], 'psnr': model['psnr'], 'ssim': model['ssim'],
          'psnr_rgb': model['psnr_rgb'],
          'per_image': [] if model['per_level'] else model['all']['per_image'],
          'levels': compact(model['levels']), 'controls': compact(model['controls']),
          'ref_gain': model['ref_gain'],
          'bicubic': {'psnr': bicubic['psnr'], 'ssim': bicubic['ssim']}}
