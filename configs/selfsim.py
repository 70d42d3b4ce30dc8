r"""Self-similarity SR: RCAN + SSEN on DIV2K 192x192 crops (paper Sec. 3.4, Fig. 4, Tab. 2).

SSEN takes the LR features as both input and reference. Evaluates on a benchmark folder of HR
images (Set5, Set14, B100, Urban100, Manga109), one Tab. 2 row.

  python -m ssen_jax.main --config configs/selfsim.py --workdir /ckpt/selfsim \
      --config.data.tfds_name=ssen_div2k --config.data.tfds_data_dir=/data/tfds \
      --config.data.eval_dir=/data/benchmarks/Urban100

Variants (`configs/selfsim.py:VARIANT`, comma-separated): `rcan` (RCAN alone, Tab. 2 "Baseline"),
`tiny` (tests), `demo` (a small model on the embedded demo data's HR images).
"""
import ml_collections

from ssen_jax.core.config import load_sibling, parse_variants

refsr = load_sibling(__file__, 'refsr')
VARIANTS = refsr.SIZES + ('rcan',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = parse_variants(arg, VARIANTS)
  config = refsr.get_config(','.join(sorted(variants & set(refsr.SIZES))))
  config.model.variant = 'rcan' if 'rcan' in variants else 'selfsim'
  config.data.kind = 'sisr'
  config.data.eval_dataset = 'folder'
  # The input is its own reference: the RefSR demo's reference mix and correlation prior (which
  # `refsr.get_config('demo')` sets) do not apply, and the input pipeline refuses a mix for 'sisr'.
  for field in ('shifted_prob', 'unrelated_prob', 'aligned_prob', 'far_prob'):
    config.data.ref_mix[field] = 0.0
  config.model.match_radius = 0
  if not variants & set(refsr.SIZES):
    config.data.hr_patch = 192  # DIV2K crops (paper Sec. 4.1).
    config.batch_size = 32  # The paper's RefSR batch; it gives none for this setting.
  if 'demo' in variants:
    config.model.rcan_groups = 2
    config.model.rcan_blocks = 3
  return config
