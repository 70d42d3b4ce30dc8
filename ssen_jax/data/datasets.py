"""Evaluation datasets (folders of images, CUFED5) and the TFRecord record format.

Evaluation examples are dicts
`{'name': str, 'hr': uint8 (H, W, 3), 'lr': uint8 (H/s, W/s, 3), 'refs': [uint8 (h, w, 3), ...]}`:
HR cropped (top-left kept) to a multiple of `scale`, LR = MATLAB bicubic `imresize(hr, 1/scale)`
rounded to uint8 (the published protocol), grayscale files replicated to three channels (the
metrics recognise them and use their own channel). CUFED5 refs are ordered XH, H, M, L, XL
(`XXX_1.png` ... `XXX_5.png`) and kept at their own size; folders have no refs.

Training records (written by `ssen_jax.data_prep.convert` and `ssen_jax.data.demo_data`, read
by `ssen_jax.data.input_pipeline`) are serialized `tf.train.Example`s whose features are all
BytesLists:

  FEATURE_NAME 'name'  one value, the example name (utf-8), e.g. '000123' or '0001_r0_c1'.
  FEATURE_HR   'hr'    one value, PNG bytes of the RGB uint8 HR image.
  FEATURE_REF  'ref'   one value, PNG bytes of the RGB uint8 reference (CUFED-style pairs only).
  FEATURE_REFS 'refs'  five values, PNG bytes of the CUFED5 references XH..XL (CUFED5 only).

This module writes that format without TensorFlow (`serialize_example`, `write_tfrecord`): the
evaluation code and the demo data must not need it. The protobuf and TFRecord framing are simple
enough to emit by hand; tests check the bytes against TensorFlow's own writer.
"""
import io
import os
import pathlib
import re
import struct
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from ssen_jax.data import images
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.data.images import DatasetError

FEATURE_NAME = 'name'
FEATURE_HR = 'hr'
FEATURE_REF = 'ref'
FEATURE_REFS = 'refs'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
CUFED5_LEVELS = ('XH', 'H', 'M', 'L', 'XL')
_CUFED5_RE = re.compile(r'^(\d+)_([0-5])\.png$', re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Evaluation examples.


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
  """Crops (H, W, ...) to (H - H % scale, W - W % scale, ...), keeping the top-left corner."""
  h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
  if h == 0 or w == 0:
    raise DatasetError(f'image of size {img.shape[0]}x{img.shape[1]} is smaller than scale {scale}')
  return img[:h, :w]


def make_example(name: str, hr: np.ndarray, scale: int, refs: Sequence[np.ndarray] = (),
                 gray: bool = False) -> dict:
  """An evaluation example: HR cropped to a multiple of `scale`, LR by MATLAB bicubic (uint8).

  `gray` records that the HR file has a single channel (scored on its own values, see
  `ssen_jax.eval.metrics`); the arrays are RGB either way.
  """
  hr = crop_to_multiple(hr, scale)
  return {'name': name, 'hr': hr, 'lr': imresize_lib.imresize(hr, 1.0 / scale), 'refs': list(refs),
          'gray': bool(gray)}


def _check_dir(directory: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(directory)
  if not path.exists():
    raise DatasetError(f'dataset folder {path} does not exist')
  if not path.is_dir():
    raise DatasetError(f'{path} is not a folder')
  return path


def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (by extension, case-insensitive) directly inside `directory`, sorted by name."""
  path = _check_dir(directory)
  files = sorted(p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise DatasetError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {path}')
  return files


def load_folder(directory: str | os.PathLike, scale: int) -> list[dict]:
  """A benchmark folder of HR images (Set5, Set14, B100, Urban100, Manga109, ...).

  Args:
    directory: folder holding the HR images directly.
    scale: SR factor.

  Returns:
    Examples `{name (file stem), hr, lr, refs=[], gray}` sorted by file name.

  Raises:
    DatasetError: missing/empty folder or an unreadable image.
  """
  examples = []
  for p in list_images(directory):
    img = images.read_image(p)
    examples.append(make_example(p.stem, img.uint8(), scale, gray=img.gray))
  return examples


def cufed5_groups(directory: str | os.PathLike) -> dict[str, dict[int, pathlib.Path]]:
  """Finds CUFED5 groups `XXX_0.png` (HR) .. `XXX_5.png` (refs XH..XL) in `directory`.

  Returns:
    {group id: {0: hr path, 1: XH path, ..., 5: XL path}} sorted by group id.

  Raises:
    DatasetError: no CUFED5 files, or a group lacks one of its six images.
  """
  path = _check_dir(directory)
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for p in path.iterdir():
    m = _CUFED5_RE.match(p.name)
    if m and p.is_file():
      groups.setdefault(m.group(1), {})[int(m.group(2))] = p
  if not groups:
    raise DatasetError(f'no CUFED5 images in {path}: expected XXX_0.png (HR) and XXX_1.png .. '
                       'XXX_5.png (references XH..XL) for each group XXX')
  for gid, members in groups.items():
    missing = [f'{gid}_{i}.png' for i in range(6) if i not in members]
    if missing:
      raise DatasetError(f'CUFED5 group {gid} in {path} is incomplete: missing {", ".join(missing)}')
  return dict(sorted(groups.items()))


def load_cufed5(directory: str | os.PathLike, scale: int) -> list[dict]:
  """CUFED5 (126 groups in the release): `{name: 'XXX', hr, lr, refs: [XH, H, M, L, XL]}`.

  Raises:
    DatasetError: missing folder, wrong layout or an unreadable image.
  """
  examples = []
  for gid, members in cufed5_groups(directory).items():
    hr = images.read_image(members[0])
    refs = [images.read_image(members[i]).uint8() for i in range(1, 6)]
    examples.append(make_example(gid, hr.uint8(), scale, refs, gray=hr.gray))
  return examples


# ---------------------------------------------------------------------------------------------
# Record format, written without TensorFlow.


def encode_png(img: np.ndarray, compress_level: int = 6) -> bytes:
  """(H, W, 3) uint8 -> PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(img, np.uint8)).save(buf, format='PNG',
                                                            compress_level=compress_level)
  return buf.getvalue()


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize_example(features: dict[str, bytes | Sequence[bytes]]) -> bytes:
  """Serializes a `tf.train.Example` whose features are all BytesLists.

  Args:
    features: {key: bytes or list of bytes}; str values are utf-8 encoded.

  Returns:
    Bytes that `tf.io.parse_single_example` reads as the same features.
  """
  entries = b''
  for key in sorted(features):  # Sorted keys: identical bytes for identical content.
    values = features[key]
    if isinstance(values, (bytes, str)):
      values = [values]
    values = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    bytes_list = b''.join(_field(1, v) for v in values)  # BytesList.value = 1
    feature = _field(1, bytes_list)  # Feature.bytes_list = 1
    entries += _field(1, _field(1, key.encode()) + _field(2, feature))  # map entry key=1 value=2
  return _field(1, entries)  # Example.features = 1; Features.feature (map) = 1 inside.


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), pure Python: about 10 MB/s, fine for the demo data's few MB."""
  crc = 0xFFFFFFFF
  table = _CRC_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  crc = crc32c(data)
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def write_tfrecord(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes an uncompressed TFRecord file (what `tf.io.TFRecordWriter` writes); returns the count."""
  count = 0
  with open(path, 'wb') as f:
    for record in records:
      length = struct.pack('<Q', len(record))
      f.write(length + _masked_crc(length) + record + _masked_crc(record))
      count += 1
  return count


def shard_names(prefix: str, num_shards: int) -> list[str]:
  """['prefix-00000-of-00008.tfrecord', ...] for `num_shards` shards."""
  return [f'{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord' for i in range(num_shards)]
