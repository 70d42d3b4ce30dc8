"""`python -m ssen_jax.benchmark`: the tables and JSON it writes, and its handling of torch.

The sizes are tiny (`--tiny`, one repetition): these tests check structure, never speed.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Runs the benchmark as `python -m` would, with torch made unimportable.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['benchmark'] + "
                 "sys.argv[1:]; runpy.run_module('ssen_jax.benchmark', run_name='__main__')")


def _run(*args, without_torch=False, check=True):
  cmd = ([sys.executable, '-c', WITHOUT_TORCH] if without_torch
         else [sys.executable, '-m', 'ssen_jax.benchmark'])
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='')
  proc = subprocess.run(cmd + list(args), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _table(markdown: str, header: str):
  """Rows (lists of cells) of the Markdown table whose header row starts with `header`."""
  lines = markdown.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f'| {header} |'))
  assert set(lines[start + 1]) <= set('|-: ')
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([cell.strip() for cell in line.strip('|').split('|')])
  return rows


def test_op_table_and_json(tmp_path):
  out = tmp_path / 'op.json'
  proc = _run('--what', 'op', '--repeats', '1', '--tiny', f'--out={out}', without_torch=True)
  result = json.loads(out.read_text())
  assert result['what'] == 'op' and result['tiny'] and result['repeats'] == 1
  machine = result['machine']
  assert {'cpu', 'cpus', 'usable_cpus', 'jax', 'jaxlib', 'backend'} <= set(machine)
  assert 'torch' not in machine  # Nothing imported torch.
  assert result['device_memory'] == dict(jax_peak_gb=None, torch_peak_gb=None, backend='cpu',
                                         torch_device=None)
  assert {r['name'] for r in result['timings']} == {
      'deform_conv2d forward', 'deform_conv2d forward+backward', 'conv 3x3 forward',
      'conv 3x3 forward+backward'}
  for row in result['timings']:
    assert row['framework'] == 'jax' and row['repeats'] == 1
    assert 0 < row['min_ms'] <= row['median_ms']
  ratios = {r['name']: r for r in result['ratios']}
  assert ratios['deform_conv2d forward / conv forward']['target'] == '<= 2'
  assert ratios['deform_conv2d fwd+bwd / conv fwd+bwd']['target'] == '<= 3'
  for r in ratios.values():
    assert r['value'] > 0 and isinstance(r['met'], bool)

  md = proc.stdout
  assert md.startswith('## ssen_jax benchmark: op')
  assert 'Peak device memory: JAX n/a on cpu.' in md
  assert f"jax {machine['jax']}" in md and machine['cpu'] in md
  timings = _table(md, 'case')
  assert [row[0] for row in timings] == [r['name'] for r in result['timings']]
  assert all(float(row[2]) > 0 and row[4] == '1' for row in timings)
  figures = _table(md, 'figure')
  assert [row[0] for row in figures] == list(ratios)
  assert all(row[3] in ('yes', '**no**') for row in figures)


def test_compare_torch_without_torch_fails_in_one_line():
  proc = _run('--what', 'op', '--repeats', '1', '--tiny', '--compare', 'torch',
              without_torch=True, check=False)
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and 'needs torch' in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr


def test_compare_torch_adds_the_peers(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  out = tmp_path / 'op.json'
  _run('--what', 'op', '--repeats', '1', '--tiny', '--compare', 'torch', f'--out={out}')
  result = json.loads(out.read_text())
  assert 'torch' in result['machine'] and result['machine']['torch_threads'] >= 1
  frameworks = {r['name']: r['framework'] for r in result['timings']}
  assert frameworks['torchvision deform_conv2d forward+backward'] == 'torch'
  ratios = {r['name']: r for r in result['ratios']}
  assert ratios['torchvision fwd+bwd / deform_conv2d fwd+bwd']['target'] == '>= 6'
  assert any('max |deform_conv2d - torchvision|' in note for note in result['notes'])


def test_memory_runs_children_and_reports_peak_rss(tmp_path):
  out = tmp_path / 'memory.json'
  proc = _run('--what', 'memory', '--tiny', f'--out={out}', without_torch=True)
  result = json.loads(out.read_text())
  assert [r['lr'] for r in result['memory']] == ['64x64', '32x32']
  for row in result['memory']:
    assert row['output'] == 'x'.join(str(4 * int(v)) for v in row['lr'].split('x'))
    assert 0.05 < row['peak_rss_gb'] < 16 and row['finite']
    assert row['rss_source'] in ('/usr/bin/time -v', 'wait4 ru_maxrss')
  assert result['ratios'][0]['target'] == '<= 16' and result['ratios'][0]['met']
  assert len(_table(proc.stdout, 'LR input')) == 2


def test_infer_and_train_with_sizes_and_torch(tmp_path):
  """--infer_lr / --train_batch reach the models, and the PyTorch peers agree with JAX."""
  pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  out = tmp_path / 'infer.json'
  _run('--what', 'infer', '--tiny', '--repeats', '1', '--infer_lr', '9x11', '--compare', 'torch',
       f'--out={out}')
  result = json.loads(out.read_text())
  assert result['machine']['torch_device'] == 'cpu'  # auto follows JAX's backend: the CPU here.
  assert 'LR 9x11 -> 36x44' in result['settings']
  assert {r['framework'] for r in result['timings']} == {'jax', 'torch'}
  err = [float(n.split('= ')[1].split()[0]) for n in result['notes'] if 'SR_torch' in n]
  assert len(err) == 1 and err[0] < 1e-4
  assert result['ratios'][0]['target'] == '>= 3'

  out = tmp_path / 'train.json'
  _run('--what', 'train', '--tiny', '--repeats', '1', '--train_batch', '3', '--compare', 'torch',
       f'--out={out}')
  result = json.loads(out.read_text())
  assert 'batch 3,' in result['settings']
  assert {r['name'] for r in result['timings']} == {
      'ssen train step', 'baseline train step', 'ssen train step (PyTorch, eager)'}
  ratios = {r['name']: r for r in result['ratios']}
  assert ratios['recompilations over all ssen steps']['value'] == 0
  assert any(n.startswith('steps/s: ssen train step ') for n in result['notes'])
  samples = result['key_figures']['samples_per_s']
  assert result['key_figures']['batch'] == 3 and set(samples) == {r['name'] for r in
                                                                   result['timings']}


@pytest.mark.parametrize('flag, message', [
    (('--what', 'infer', '--infer_lr', '9by11'), '--infer_lr must look like 80x137'),
    (('--what', 'train', '--train_batch', '0'), '--train_batch must be at least 1'),
])
def test_bad_sizes_fail_in_one_line(flag, message):
  proc = _run(*flag, '--tiny', '--repeats', '1', without_torch=True, check=False)
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], proc.stderr


def test_json_is_checked_before_measuring(tmp_path):
  """An existing --out file is refused unless --overwrite, and an unwritable place is refused,
  in one line before anything is measured (no table printed)."""
  existing = tmp_path / 'op.json'
  existing.write_text('{"earlier": "results"}\n')
  blocked = tmp_path / 'file'
  blocked.write_text('x')
  for target, message in [(existing, 'exists; pass --overwrite'),
                          (blocked / 'op.json', 'does not exist'),
                          (tmp_path, 'is a folder')]:
    proc = _run('--what', 'op', '--repeats', '1', '--tiny', f'--out={target}',
                without_torch=True, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ''  # Nothing measured.
  assert existing.read_text() == '{"earlier": "results"}\n'
  # --json, the old spelling of --out, still sets it (one release), with a warning line.
  proc = _run('--what', 'op', '--repeats', '1', '--tiny', f'--json={existing}',
              without_torch=True, check=False)
  assert proc.returncode == 1 and proc.stdout == ''
  assert f'warning: --json is deprecated; use --out={existing}' in proc.stderr
  assert 'exists; pass --overwrite' in proc.stderr


def test_json_write_is_atomic(tmp_path):
  from ssen_jax import benchmark
  out = tmp_path / 'op.json'
  out.write_text('{"earlier": "results"}\n')
  with pytest.raises(TypeError):  # Fails half-way through the dump ...
    benchmark.write_json(str(out), {'a': 1, 'b': object()})
  assert out.read_text() == '{"earlier": "results"}\n'  # ... the old file is whole ...
  assert [p.name for p in tmp_path.iterdir()] == ['op.json']  # ... and nothing is left beside.
  benchmark.write_json(str(out), {'a': 1})
  assert json.loads(out.read_text()) == {'a': 1} and oct(out.stat().st_mode & 0o777) != '0o600'


def test_compile_reports_flops_memory_and_estimates(tmp_path):
  """--what compile on the tiny config at batch 4: XLA's FLOPs and memory for the train step, a
  per-sample slope from batch 2, and the accelerator estimates (compile only, as CI's budget
  wants; the measured steps run in launch/gpu_benchmark.sh --tiny)."""
  out = tmp_path / 'compile.json'
  proc = _run('--what', 'compile', '--tiny', '--train_batch', '4', '--repeats', '0',
              f'--out={out}', without_torch=True)
  row = json.loads(out.read_text())['compile'][0]
  assert row['batch'] == 4 and row['gflop_per_step'] > 0 and row['compile_s'] > 0
  # Counted from the jaxpr and by XLA: the same convolutions, element-wise counts differ a little.
  assert 0.7 < row['gflop_per_step'] / row['xla_gflop_per_step'] < 1.4
  assert row['per_sample_gb'] > 0 and row['step_memory_gb'] > row['fixed_gb'] > 0
  assert 'step_s' not in row  # --repeats 0: nothing run.
  estimates = json.loads(out.read_text())['estimates']
  assert [e['accelerator'].split(' (')[0] for e in estimates] == ['H100 SXM', 'TPU v4-8',
                                                                    'TPU v5e-8']
  assert all(0 < e['paper_schedule_hours'] < e['paper_schedule_hours_low_utilisation']
             and e['largest_batch_per_chip'] > 4 for e in estimates)
  assert len(_table(proc.stdout, 'config')) == 1 and 'ESTIMATE' in proc.stdout
  bad = _run('--what', 'train', '--repeats', '0', check=False)
  assert bad.returncode == 1 and bad.stderr.strip() == 'error: --repeats must be at least 1, got 0.'


def test_parity_latency_and_summary_at_tiny_sizes(tmp_path):
  """The GPU script's new figures, called in-process at tiny sizes (the script itself runs them in
  launch/gpu_benchmark.sh --tiny): the op's and the model's parity with PyTorch, the latency at
  the paper's output size rule, the peak-memory line, and the summary that gathers them."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  from ssen_jax.benchmarks import harness, model_speed, parity, summary
  op = parity.bench_op_parity(1, True, torch)
  rows = {(r['precision'], r['compared']): r for r in op['parity']}
  assert set(rows) == {(p, c) for p in ('float32', 'default')
                       for c in ('output', 'd/dx', 'd/doffsets', 'd/dmask', 'd/dkernel', 'd/dbias')}
  assert all(r['max_rel'] < 1e-5 and r['torch_max'] > 0 for r in rows.values())
  assert [r['met'] for r in op['ratios']] == [True, True]

  model = parity.bench_model_parity(1, True, torch, lr_size=(6, 5), batch=1)
  k = model['key_figures']
  assert 'LR 6x5 -> 24x20' in model['settings'] and k['grad_tensors'] > 50
  assert k['output_max_abs'] < 1e-4 and k['worst_grad_rel'] < 1e-3 and k['psnr_db'] > 80
  assert all(r['met'] for r in model['ratios'])

  latency = model_speed.bench_latency(1, True, torch)
  assert 'LR 12x20 -> 48x80 cropped to 46x78' in latency['settings']
  assert latency['key_figures']['paper_s'] == 0.95 and latency['key_figures']['torch_s'] > 0
  err = [float(n.split('= ')[1].split()[0]) for n in latency['notes'] if 'SR_torch' in n]
  assert len(err) == 1 and err[0] < 1e-4  # The crop is the same on both sides.

  memory = harness.device_memory(torch, 'cpu')
  assert memory['jax_peak_gb'] is None and memory['torch_peak_gb'] is None  # This CPU.
  assert harness.memory_line(memory) == 'Peak device memory: JAX n/a on cpu; PyTorch n/a on cpu.'
  machine = harness.machine_info(torch)
  for name, result in (('op_parity', op), ('model_parity', model), ('latency', latency)):
    result = dict(result, what=name, machine=machine, device_memory=memory,
                  load_average_after=0.0)
    md = harness.to_markdown(result)
    assert 'Peak device memory: JAX n/a on cpu' in md
    if name != 'latency':
      assert len(_table(md, 'precision')) == len(result['parity'])
    (tmp_path / f'{name}.json').write_text(json.dumps(result))
  (tmp_path / 'run.tsv').write_text('op_parity\t0\t3\t40\nmodel_parity\t0\t9\t70\n'
                                    'latency\t0\t5\t50\ntrain\t124\t110\t110\n'
                                    'train_bf16\t1\t2\t80\ncompile\tskipped\t0\t2\n'
                                    'total\t-\t129\t460\n')
  result = summary.summarize(str(tmp_path))
  text = summary.to_markdown(result)
  rows = {r['what'].split(',')[0]: r for r in result['summary']}
  assert rows['inference latency']['note'] == 'paper: 0.95 s on a GTX 1080 Ti'
  assert [r['jax'] for r in result['summary'] if r['what'].startswith('train step')] == [
      'timed out after 110 s', 'failed (exit 1)']
  assert rows['full-size step compile']['jax'] == 'skipped: no time left'
  assert rows['deform_conv2d speed']['jax'] == 'not run'
  assert result['figures']['train'] is None and result['figures']['latency']['what'] == 'latency'
  assert len(_table(text, 'figure')) == len(result['summary'])
  assert [row[1] for row in _table(text, 'table')] == ['ok', 'ok', 'ok', '124', '1', 'skipped']
  assert text.rstrip().endswith('Total: 129 s of a 460 s budget.')


def test_full_size_folders_hold_the_published_patch_sizes(tmp_path, set5_dir):
  """The raw folders of docs/performance.md's full-size runs: the layouts `data_prep` reads, and
  images large enough for the published configs' patches (refsr 160, selfsim 192)."""
  from conftest import config_module  # pylint: disable=g-import-not-at-top
  from ssen_jax.benchmarks import full_size_data  # pylint: disable=g-import-not-at-top
  from ssen_jax.data_prep import layouts  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = full_size_data.write_folders(tmp_path, set5_dir)
  size = lambda p: Image.open(p).size
  pairs = layouts.find_cufed(pathlib.Path(paths['cufed']))
  groups = layouts.find_cufed5(pathlib.Path(paths['cufed5']))
  div2k = layouts.find_div2k(pathlib.Path(paths['div2k']) / 'DIV2K_train_HR')
  assert (len(pairs), len(groups), len(div2k)) == (6, 2, 3)
  patch = config_module('refsr').get_config().data.hr_patch
  assert {size(p) for job in pairs for p in job.paths} == {(patch, patch)}
  assert {size(job.paths[0]) for job in groups} == {(500, 332)}
  patch = config_module('selfsim').get_config().data.hr_patch
  assert min(min(size(job.paths[0])) for job in div2k) >= patch
