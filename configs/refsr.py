r"""SSEN for reference-based SR on CUFED, evaluated on CUFED5 per similarity level (paper Sec. 4).

Variants (`--config configs/refsr.py:VARIANT`, comma-separated, e.g. `:dcn2` or `:demo,baseline`):
  (none)       the paper's setting: batch 32, 100K steps, Adam 1e-4, cosine restarts (gamma 0.9).
  baseline     SSEN removed (paper Tab. 1/3 "Baseline").
  dcn0..dcn4   number of stacked deformable convolutions (paper Tab. 4, top).
  no_nonlocal  offset estimators without non-local blocks (paper Tab. 4, bottom).
  bf16         compute in bfloat16 (TPUs, recent GPUs); parameters, optimiser state, sampling
               coordinates, softmax accumulators and the correlation prior stay float32.
  demo         a small model on the embedded demo data; trains on a 2-core CPU in ~9 minutes.
  tiny         a minute model for tests.

Paper run (one TPU v4-8 / 8-GPU host; prepare data first, see ssen_jax/data_prep/README.md):
  python -m ssen_jax.main --config configs/refsr.py --workdir /ckpt/ssen \
      --config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir=/data/tfds \
      --config.data.eval_dir=/data/CUFED5
Quick start on a laptop (downloads nothing):
  python -m ssen_jax.main --config configs/refsr.py:demo --workdir /tmp/ssen_demo
"""
import ml_collections

from ssen_jax.core.config import parse_variants

SIZES = ('demo', 'tiny')  # Variants that shrink the run; every other one changes the model.
VARIANTS = SIZES + ('baseline', 'no_nonlocal', 'bf16') + tuple(f'dcn{n}' for n in range(5))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the RefSR config; `arg` is a comma-separated list of variants (see docstring)."""
  variants = parse_variants(arg, VARIANTS)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Compute dtype: 'float32' or 'bfloat16' (the `bf16` variant); parameters stay float32.
  config.dtype = 'float32'

  config.model = m = ml_collections.ConfigDict()
  m.variant = 'ssen'  # 'ssen' | 'baseline' | 'selfsim' | 'rcan'.
  m.scale = 4
  m.features = 64  # C in the paper and docs/choices.md.
  m.num_extract_blocks = 5  # Residual blocks of the (shared) feature extractor.
  m.num_recon_blocks = 16  # Residual blocks of the reconstruction network.
  m.num_dcn_layers = 3  # Stacked deformable convolutions (paper Tab. 4: 3 is best).
  m.use_nonlocal = True  # Non-local blocks in the dynamic offset estimators.
  m.offset_groups = 1  # Deformable groups per DCN layer (DCNv2 default; the paper is silent).
  # Correlation prior of SSEN's first layer (not in the paper; 0 = off, the paper's SSEN): the
  # soft arg-max of LR/reference feature similarity within this many LR pixels is added to the
  # first layer's offsets. docs/choices.md, "Correlation prior".
  m.match_radius = 0
  # 0: the prior's flow is the soft arg-max over the whole window; l > 0: over the displacements
  # within l LR pixels of the best match (sub-pixel, no pull towards the window's centre).
  m.match_local_radius = 0
  # With the prior: resample the HR reference by the prior's flow before extracting its features,
  # instead of moving LR-grid features in SSEN's first layer (docs/choices.md, "Reference pre-warp").
  m.ref_prewarp = False
  # With the prior: search at 1/p LR pixel (the reference moved by whole HR pixels before it is
  # brought to the LR grid, p^2 versions); 1: whole LR pixels. docs/choices.md, "Sub-pixel search".
  m.match_phases = 1
  # False freezes SSEN's own (learned) offsets at zero, masks kept: with the prior, the "prior
  # only" control of the reference-use study (docs/reference_use.md); not a paper setting.
  m.learned_offsets = True
  m.rcan_groups = 10  # RCAN residual groups (selfsim / rcan only).
  m.rcan_blocks = 20  # RCABs per group.
  m.rcan_reduction = 16  # Channel-attention reduction.
  m.nonlocal_chunk = 1024  # Block length of the memory-bounded attention.
  m.nonlocal_dense_max = 4096  # Positions up to which attention is computed densely.

  config.data = d = ml_collections.ConfigDict()
  d.kind = 'refsr'  # 'refsr' (HR + reference pairs) or 'sisr' (HR only; selfsim / rcan).
  # Training data: a TFDS dataset prepared by `python -m ssen_jax.data_prep.tfds_build` (e.g.
  # 'ssen_cufed', 'ssen_div2k') read from tfds_data_dir ('' : TFDS's default; every host needs
  # it, a copy each or a shared folder).
  d.tfds_name = ''
  d.tfds_data_dir = ''
  d.tfds_split = 'train'
  d.hr_patch = 160  # HR crop side; CUFED pairs are 160x160.
  # 'independent': the reference gets its own crop, 90-degree rotation and flip; 'paired': crop
  # position and rotation shared with the HR; 'mixed': independent with probability
  # ref_independent_prob, else paired. Measured at demo scale (docs/reference_use.md, "Earlier runs", augmentation study
  # table; the records' own references only, with the 3-pixel correlation prior so that the
  # reference path can open at all, 1600 steps, baseline 29.51 dB): independent XH/XL/ref_gain
  # 29.50/29.50/+0.00 (reference ignored: a reference turned 90 degrees cannot be aligned by 3x3
  # offsets), paired 30.41/29.29/+1.75 (used, but an unrelated reference now hurts: XL -0.22),
  # mixed (p = 0.5) 29.75/29.52/+0.24 (used and robust). Without the prior all three leave the
  # path closed. So the paper configuration takes 'mixed' with p = 0.5 (the paper is silent).
  d.ref_augment = 'mixed'
  d.ref_independent_prob = 0.5
  # Other reference sources (ssen_jax.data.input_pipeline.RefMix): shifted views of the HR image
  # itself with a misalignment curriculum, far (turned, zoomed) views, and unrelated references
  # (another example's image).
  d.ref_mix = ml_collections.ConfigDict()
  d.ref_mix.shifted_prob = 0.0
  d.ref_mix.unrelated_prob = 0.0
  d.ref_mix.aligned_prob = 0.0  # Share of references cut at the HR crop itself ...
  d.ref_mix.aligned_jitter = 0.0  # ... up to this many HR pixels away per axis.
  d.ref_mix.shift_ramp_start = 0  # Shifted views are aligned until this step, then their ...
  d.ref_mix.shift_max = 8.0  # ... largest |shift| per axis (HR pixels) grows linearly to this ...
  d.ref_mix.shift_ramp_steps = 0  # ... over these steps (0: at once).
  d.ref_mix.shift_quantum = 1  # Shifts are multiples of this (HR pixels; 4 = whole LR pixels).
  d.ref_mix.photometric = 0.0  # Reference gain jitter 1 +- p, offset +- 100 p levels.
  d.ref_mix.far_prob = 0.0  # Share of shifted views whose largest shift is ...
  d.ref_mix.far_max = 64.0  # ... this many HR pixels instead (same curriculum), ...
  d.ref_mix.far_rotate = 0.0  # ... turned by up to this many degrees ...
  d.ref_mix.far_zoom = 0.0  # ... and magnified by 1 +- this (bilinear resampling).
  d.eval_dataset = 'cufed5'  # 'cufed5' (per-level table) or 'folder' (benchmark folder).
  d.eval_dir = ''  # CUFED5-style folder (XXX_0.png HR, XXX_1..5.png refs) or HR folder.
  d.eval_max_images = 0  # Evaluate only the first N groups/images during training (0: all).
  d.demo = False  # Build and use the embedded demo dataset (TFDS 'ssen_demo') instead.
  d.demo_dir = ''  # Where the demo data and its TFDS folder go ('' : ~/.cache/ssen_jax).

  config.batch_size = 32  # Global batch over all devices and hosts.
  config.num_train_steps = 100_000

  config.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.warmup_steps = 0
  # Cosine annealing with warm restarts (SGDR): each cycle's peak is gamma times the previous one.
  # The paper cites gamma = 0.9 without a cycle length; we take 4 cycles over the run.
  o.cycle_steps = 25_000
  o.restart_decay = 0.9
  o.min_lr_ratio = 0.0  # Floor of each cosine cycle, as a fraction of its peak.
  o.grad_clip_norm = 0.0  # 0 disables clipping (the paper uses none).
  # Step-size factor of SSEN's offset branch (offset estimators, offset/mask convolutions).
  o.offset_lr_multiplier = 1.0

  config.loss = l = ml_collections.ConfigDict()
  l.charbonnier_eps = 1e-6  # Paper Eq. 4.
  # Weight of an auxiliary loss pulling SSEN's output towards the features of the HR crop itself
  # (not in the paper; 0 disables it). docs/choices.md, "Alignment loss".
  l.align_weight = 0.0
  l.adversarial_weight = 0.0  # > 0 only in the GAN stage (configs/refsr_gan.py).

  config.gan = g = ml_collections.ConfigDict()
  g.init_workdir = ''  # GAN stage: workdir of the reconstruction run whose params start it.
  g.disc_features = 64
  g.disc_learning_rate = 1e-4

  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3  # The latest K are kept, plus the best by eval PSNR.
  config.num_image_summaries = 3  # Eval groups shown as bicubic | SR | HR | reference.

  if 'baseline' in variants:
    m.variant = 'baseline'
  for n in range(5):
    if f'dcn{n}' in variants:
      m.num_dcn_layers = n
  if 'no_nonlocal' in variants:
    m.use_nonlocal = False
  if 'bf16' in variants:
    config.dtype = 'bfloat16'
  if 'demo' in variants:
    d.demo = True
    # The correlation prior (our extension) moves SSEN's first layer to the best match and carries
    # the demo's whole reference gain (docs/reference_use.md: trained with SSEN's learned offsets
    # frozen at zero the demo scores the same; without the prior, +0.19 dB), searching 18 LR
    # pixels around each position (the evaluation's M references share a quarter of the crop 16 LR
    # pixels away; a 3-pixel window left M tied with XL). References: 15 % the HR crop itself,
    # 25 % views of the same photo shifted by up to 8 HR pixels (any whole HR pixel, so also
    # fractions of an LR pixel), 20 % far views shifted by up to 64 HR pixels, turned by up to 6
    # degrees and zoomed by up to 10 % (both shifts aligned until step 200, full range by step
    # 700), 35 % unrelated (the masks learn to gate them, and the network learns to do without),
    # 5 % the records' own references (rotated, rescaled, shifted views). 1350 steps: the quick
    # start stays within 10 minutes on a 2-core CPU.
    m.match_radius = 18
    d.ref_augment = 'paired'
    d.ref_mix.aligned_prob = 0.15
    d.ref_mix.shifted_prob = 0.25
    d.ref_mix.far_prob = 0.2
    d.ref_mix.unrelated_prob = 0.35
    d.ref_mix.shift_ramp_start = 200
    d.ref_mix.shift_ramp_steps = 500
    d.ref_mix.shift_max = 8.0
    d.ref_mix.far_max = 64.0
    d.ref_mix.far_rotate = 6.0
    d.ref_mix.far_zoom = 0.1
    d.ref_mix.shift_quantum = 1
    d.ref_mix.photometric = 0.1
    m.features = 32
    m.num_extract_blocks = 2
    m.num_recon_blocks = 4
    d.hr_patch = 96
    config.batch_size = 8
    config.num_train_steps = 1_350
    o.learning_rate = 4e-4
    o.cycle_steps = 1_350
    o.warmup_steps = 50
    config.log_every_steps = 50
    config.eval_every_steps = 800
    config.checkpoint_every_steps = 400
  if 'tiny' in variants:
    m.features = 8
    m.num_extract_blocks = 1
    m.num_recon_blocks = 1
    m.rcan_groups = 1
    m.rcan_blocks = 1
    m.rcan_reduction = 4
    g.disc_features = 8
    d.hr_patch = 32
    config.batch_size = 8
    config.num_train_steps = 2
    o.cycle_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 1
    config.num_image_summaries = 1
  return config
