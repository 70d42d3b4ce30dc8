r"""The figures of `python -m ssen_jax.benchmark --what WHAT`, one module per kind.

  python -m ssen_jax.benchmark --what op --compare torch      # deform_conv2d vs torchvision, conv
  python -m ssen_jax.benchmark --what infer --compare torch   # full `ssen`, 80x137 LR -> 320x548
  python -m ssen_jax.benchmark --what latency --compare torch # the paper's 322x550 output
  python -m ssen_jax.benchmark --what train --compare torch   # train step, batch 4, 160x160 HR
  python -m ssen_jax.benchmark --what memory                  # 1024x1024 and 512x512 LR, peak RSS
  python -m ssen_jax.benchmark --what compile --config configs/selfsim.py  # published size: FLOPs,
      # XLA memory, compile time, 2 steps here, accelerator estimates (--repeats 0: compile only)
  python -m ssen_jax.benchmark --what tiles --config configs/refsr.py:demo --infer_lr 2048x2048
      # the tile plan's choice against every tiling it compares (time of the model calls)
  python -m ssen_jax.benchmark --what op_parity               # against torchvision, every gradient
  python -m ssen_jax.benchmark --what model_parity            # against the PyTorch twin
  launch/gpu_benchmark.sh --out_dir DIR   # on a GPU: all of them, torch on the GPU too, < 8 min
  python -m ssen_jax.benchmark --what summary --out DIR/summary.json   # its tables in one

Modules: `harness` (timing, report format, peak device memory), `inputs` (config, random weights of
realistic scale, images), `op`, `model_speed` (infer, latency, train), `memory`, `full_size`
(compile), `full_size_data` (small raw folders in the published datasets' layouts), `tiles`,
`parity`, `summary`, `torch_peers` (torch set-up, the PyTorch twin holding our weights).

Speed is quoted as ratios measured in one run on one machine, since absolute times drift: every
case is run once per repetition, the cases interleaved, and the median of the repetitions is
reported (with the minimum). The model is `--config`'s (default `configs/refsr.py`, relative to
the working directory; `--tiny`: its `tiny` variant and small sizes) with random weights of
realistic scale, in the config's dtype. With `--compare torch` the same weights are copied into the
PyTorch twin and its output is checked against ours; `--torch_device` (default: the chip JAX runs
on) says where the PyTorch peers run, and they are synchronised before each timing stops. Every
report ends with the process's peak device memory (JAX's allocator; torch's CUDA allocator), n/a
on a CPU.

`--out FILE` is checked before anything is measured (its folder must take files; an existing FILE
is refused unless --overwrite) and written atomically (a temporary file in the same folder, then a
rename), so a failed or interrupted run never leaves a truncated or half-replaced file.

torch is optional (the `test` extra) and imported only with `--compare torch` or a parity figure.
"""
