"""The compressed model file (Deep Compression Sec. 2 Fig. 2, Sec. 4): relative indices, Huffman coding, both ways.

A weight-shared kernel is stored as a stream of entries, one per kept weight
in neuron-major order plus fillers: each entry holds the jump from the previous entry's
position (the first from position -1) in `index_bits` bits, and a weight
symbol, 0 for a filler and i + 1 for cluster i. A jump longer than 2**b is
split by fillers of 2**b each (as in the paper's Fig. 2, "span exceeds 8 = 2^3"
for b = 3). Neuron-major is C order over the kernel with its last (output) axis
moved first: Caffe's and PyTorch's (out, in, ...) layout that the paper coded,
where one neuron's weights are contiguous; on LeNet-300-100's ip1 it codes
the relative indices in 3.5 bits instead of 4.3. Both streams are Huffman
coded per layer. Any other leaf is stored
raw. docs/FORMAT.md gives the file byte by byte; `write` and `read` round-trip
a Flax variables tree exactly: linen's dicts, boxed parameters (stored
unboxed), an nnx.State or its pure dict (integer keys of layers in a list come
back as integers), float32, float16 and bfloat16 alike. Given `metadata` (a
JSON object: what the model is and what data it takes), `write` stores it in
a first record of its own (format version 3), and `read_metadata` reads it
back without decoding the weights. A kernel with a codebook per group of
output channels (`SharedKernel.group_size`) is a record of its own kind, in
format version 5; the indices stay local to their group's row, so one
Huffman code serves all the groups of a layer. A kernel of vectors
(`SharedKernel.vector_size` d > 1) is a record of its own kind too, in format
version 6: the kept weights' positions as before, but with the filler marked
by the index field alone, and one weight symbol per vector that keeps a weight.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from dc_jax import atomic, flax_trees, huffman, rules, share
from dc_jax.errors import ConfigError, DataError
from dc_jax.share import SharedKernel

MAGIC = b"DCJAXZ\r\n"  # \r\n: a text-mode copy that mangles line ends fails at once.
VERSION = 2  # The newest version without metadata. A writer writes 1 unless the tree needs 2 (FORMAT.md)...
METADATA_VERSION = 3  # ...and 3, version 2 with a metadata record first, whenever it is given metadata.
DEFLATED_VERSION = 4  # A whole file of version 1, 2, 3, 5 or 6, DEFLATE-compressed: `write(..., deflate=True)`.
GROUPED_VERSION = 5  # Version 3 plus grouped shared records (GROUPED), written whenever the tree holds one.
VECTOR_VERSION = 6  # Version 5 plus records of vectors (VECTOR), written whenever the tree holds one.
VERSIONS = (1, 2, 3, DEFLATED_VERSION, GROUPED_VERSION, VECTOR_VERSION)
MAX_INFLATED_BYTES = 2**40  # A reader's limit on the file a version-4 file holds (its header says the size).
MAX_INDEX_BITS = 16
MAX_KERNEL_WEIGHTS = 2**32  # A reader's limit: 8 bytes of a shape can ask for more memory than any machine has.
AUTO_INDEX_BITS = range(2, 9)  # The widths "auto" tries per layer; the paper uses 4, 5 and 8.
# One width for every shared layer, or (pattern, width) pairs where the first fullmatch wins; "auto" picks per layer.
IndexBits = int | str | Sequence[tuple[str, int | str]]
# Record kinds: a plain array, a SharedKernel, an empty dict, metadata, a SharedKernel with a codebook per group,
# a SharedKernel with a codebook of vectors.
RAW, SHARED, EMPTY, METADATA, GROUPED, VECTOR = 0, 1, 2, 3, 4, 5
_RAW_KINDS = "biufc"  # numpy dtype kinds stored raw: bool, signed, unsigned, float, complex.
STR_KEY, INT_KEY = 0, 1  # Version 2's key types: a dict key, or an integer (nnx's index of a layer in a list).
# ml_dtypes' types (numpy kind 'V', so dtype.str "<V2" does not name them): stored by name, from version 2.
ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz", "float8_e4m3fnuz",
             "float8_e5m2fnuz", "int4", "uint4")
MAX_METADATA_BYTES = 2**20  # A reader's limit on the metadata record: a model's description is a few hundred bytes.
CODEBOOK_DTYPES = ("float32", "float16", "bfloat16")  # A SharedKernel's codebook; float32 only in version 1.
_HEADER = struct.Struct("<8sHI")  # magic, version, record count; then the CRC32 of these 14 bytes.
_DEFLATED_HEADER = struct.Struct("<8sHQ")  # magic, version 4, the inner file's size; then the CRC32 of these 18 bytes.


@dataclasses.dataclass(frozen=True)
class EncodedLayer:
  """A SharedKernel as its relative-index entries, Huffman coded: what one shared record holds."""

  shape: tuple[int, ...]
  index_dtype: np.dtype  # The kernel's indices dtype, restored on decoding.
  codebook: np.ndarray  # [k], [groups, k] with group_size, [k, d] with vector_size; a CODEBOOK_DTYPES dtype.
  index_bits: int  # b: each entry's jump is 1..2**b, stored as jump - 1 (vectors: 1..2**b - 1, or a filler).
  entries: int  # Kept weights plus fillers.
  weight_lengths: np.ndarray  # uint8 code lengths of weight symbols 0 (filler), 1..k (cluster + 1); vectors: 0..k-1.
  weight_payload: bytes
  index_lengths: np.ndarray  # uint8 code lengths of the fields 0..2**b - 1 (jump - 1).
  index_payload: bytes
  group_size: int = 0  # Output channels per codebook row (SharedKernel.group_size); 0 = one [k] codebook.
  vector_size: int = 1  # Weights per index (SharedKernel.vector_size); 1 = scalar codebooks.


class Summary(NamedTuple):
  """What `write` stored: one row per shared layer (the paper's Tables 2-5) and the totals, all plain Python."""

  layers: list[dict[str, Any]]
  totals: dict[str, Any]


def _check_width(value: Any) -> None:
  valid = value == "auto" or (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                              and 0 <= value <= MAX_INDEX_BITS)
  if not valid:
    raise ConfigError(f"codec.index_bits={value!r} is not an index width; "
                      f"valid: an integer 1..{MAX_INDEX_BITS}, or 'auto' (or 0, as in the config)")


def check_index_bits(index_bits: IndexBits) -> None:
  """Fails on a width outside 1..16 (or 'auto', or 0 for auto), or on rules that are not (regex, width) pairs."""
  if isinstance(index_bits, (numbers.Integral, str)):
    return _check_width(index_bits)
  if not isinstance(index_bits, Sequence) or not all(
      isinstance(rule, Sequence) and len(rule) == 2 and isinstance(rule[0], str) for rule in index_bits):
    raise ConfigError(f"codec.index_bits={index_bits!r} is not a width nor (regex, width) pairs")
  for _, value in index_bits:
    _check_width(value)


def layer_index_bits(index_bits: IndexBits, name: str) -> int | str:
  """The width `index_bits` gives the layer `name`."""
  return rules.value_for(index_bits, name, "codec.index_bits")


def neuron_major(array: np.ndarray) -> np.ndarray:
  """The kernel with its output axis first, the order positions are counted in (a view)."""
  return np.moveaxis(array, -1, 0) if array.ndim > 1 else array


def from_neuron_major(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The inverse of `neuron_major` for a flat array of a kernel of `shape`."""
  if len(shape) <= 1:
    return array.reshape(shape)
  return np.ascontiguousarray(np.moveaxis(array.reshape(shape[-1], *shape[:-1]), 0, -1))


def _kernel_arrays(kernel: SharedKernel, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The kernel's (codebook, indices, mask) as numpy, checked so that decoding can restore them exactly."""
  codebook, indices, mask = (np.asarray(a) for a in (kernel.codebook, kernel.indices, kernel.mask))
  rows = -(-indices.shape[-1] // kernel.group_size) if kernel.group_size and indices.ndim else None
  expected = "[k]" if rows is None else f"[{rows}, k] (a row per {kernel.group_size} output channels)"
  if codebook.dtype.name not in CODEBOOK_DTYPES or codebook.shape[:-1] != (() if rows is None else (rows,)):
    raise ValueError(f"{name}: codebook must be {expected} of {', '.join(CODEBOOK_DTYPES)}; "
                     f"got {codebook.dtype}{list(codebook.shape)}")
  if indices.dtype.kind != "u" or mask.dtype != bool or indices.shape != mask.shape:
    raise ValueError(f"{name}: indices must be unsigned and mask bool, of one shape; "
                     f"got {indices.dtype}{list(indices.shape)} and {mask.dtype}{list(mask.shape)}")
  k = codebook.shape[-1]
  if k > np.iinfo(indices.dtype).max + 1:
    raise ValueError(f"{name}: {indices.dtype} indices cannot address {k} clusters")
  if np.any(indices[~mask]):
    raise ValueError(f"{name}: indices must be 0 at pruned positions, or they would not survive the round trip")
  if np.any(indices[mask] >= k):
    raise ValueError(f"{name}: an index is >= the {k} clusters of the codebook")
  return codebook, indices, mask


def relative_entries(mask: np.ndarray, indices: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(weight symbols, index fields) of the kept weights in C order, fillers inserted (paper Fig. 2).

  A kept weight `gap` positions after the previous entry takes f = (gap - 1) >> b
  fillers (symbol 0, field 2**b - 1, a jump of 2**b) and then its own entry
  (symbol index + 1, field gap - 1 - f * 2**b).
  """
  kept = np.flatnonzero(np.ravel(mask))
  gap = np.diff(kept, prepend=-1)
  fillers = (gap - 1) >> index_bits
  own = np.cumsum(fillers + 1) - 1  # Each kept weight's entry, after its fillers.
  entries = int(own[-1]) + 1 if kept.size else 0
  symbols = np.zeros(entries, np.int64)
  symbols[own] = np.ravel(indices)[kept].astype(np.int64) + 1
  fields = np.full(entries, (1 << index_bits) - 1, np.int64)
  fields[own] = (gap - 1) & ((1 << index_bits) - 1)
  return symbols, fields


def absolute_positions(symbols: np.ndarray, fields: np.ndarray, size: int) -> np.ndarray:
  """The flat positions of the kept weights (the non-filler entries); inverse of `relative_entries`."""
  positions = np.cumsum(fields.astype(np.int64) + 1) - 1
  kept = positions[symbols != 0]
  if kept.size and kept[-1] >= size:
    raise ValueError(f"the entries reach position {int(kept[-1])} of a kernel of {size} weights")
  return kept


def _stored_lengths(frequencies: np.ndarray) -> np.ndarray:
  """Code lengths without the trailing zeros: the table a record stores."""
  lengths = huffman.code_lengths(frequencies)
  present = np.flatnonzero(lengths)
  return lengths[:present[-1] + 1] if present.size else lengths[:0]


def _auto_index_bits(mask: np.ndarray, indices: np.ndarray, k: int) -> int:
  """The width in AUTO_INDEX_BITS with the fewest coded bytes (both streams and their code tables)."""
  kept = np.flatnonzero(np.ravel(mask))
  gap_1 = np.diff(kept, prepend=-1) - 1
  clusters = np.bincount(np.ravel(indices)[kept].astype(np.int64) + 1, minlength=k + 1)

  def coded_bytes(counts: np.ndarray) -> int:
    lengths = _stored_lengths(counts)
    return -(-huffman.coded_bits(counts[:lengths.size], lengths) // 8) + lengths.size

  def size(bits: int) -> int:
    fillers = int(np.sum(gap_1 >> bits))
    weights = clusters.copy()
    weights[0] = fillers
    fields = np.bincount(gap_1 & ((1 << bits) - 1), minlength=1 << bits)
    fields[-1] += fillers
    return coded_bytes(weights) + coded_bytes(fields)

  return min(AUTO_INDEX_BITS, key=size)


def encode_layer(kernel: SharedKernel, index_bits: int | str = 5,
                 name: str = "kernel") -> tuple[EncodedLayer, dict[str, Any]]:
  """A SharedKernel as Huffman-coded relative-index entries, and its row of the paper's Tables 2-5.

  Args:
    kernel: the weight-shared kernel.
    index_bits: b in 1..16, or "auto" (or 0) for the b in 2..8 that codes smallest.
    name: the layer's path, for messages.
  """
  _check_width(index_bits)
  if kernel.vector_size > 1:
    return _encode_vectors(kernel, index_bits, name)
  codebook, indices, mask = _kernel_arrays(kernel, name)
  shape = tuple(int(d) for d in mask.shape)
  indices, mask = neuron_major(indices), neuron_major(mask)
  k = codebook.shape[-1]
  bits = _auto_index_bits(mask, indices, k) if index_bits in ("auto", 0) else int(index_bits)
  symbols, fields = relative_entries(mask, indices, bits)
  weight_counts = np.bincount(symbols, minlength=k + 1)
  field_counts = np.bincount(fields, minlength=1 << bits)
  weight_lengths, index_lengths = _stored_lengths(weight_counts), _stored_lengths(field_counts)
  encoded = EncodedLayer(
      shape=shape, index_dtype=indices.dtype, codebook=codebook, index_bits=bits,
      entries=int(symbols.size), weight_lengths=weight_lengths,
      weight_payload=huffman.encode(symbols, weight_lengths), index_lengths=index_lengths,
      index_payload=huffman.encode(fields, index_lengths), group_size=kernel.group_size)
  return encoded, layer_stats(encoded, weight_counts, field_counts, kept=int(mask.sum()))


def _vector_arrays(kernel: SharedKernel, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A kernel of vectors' (codebook [k, d], indices [neurons, vectors], mask) as numpy, checked as `_kernel_arrays`."""
  codebook, indices, mask = (np.asarray(a) for a in (kernel.codebook, kernel.indices, kernel.mask))
  d = kernel.vector_size
  grid = share.vector_grid(mask.shape, d)
  if codebook.dtype.name not in CODEBOOK_DTYPES or codebook.ndim != 2 or codebook.shape[1] != d:
    raise ValueError(f"{name}: codebook must be [k, {d}] of {', '.join(CODEBOOK_DTYPES)}; "
                     f"got {codebook.dtype}{list(codebook.shape)}")
  if indices.dtype.kind != "u" or mask.dtype != bool or indices.shape != (grid[0], grid[2]):
    raise ValueError(f"{name}: indices must be unsigned [{grid[0]}, {grid[2]}] (one per vector of {d}) and mask "
                     f"bool; got {indices.dtype}{list(indices.shape)} and {mask.dtype}{list(mask.shape)}")
  present = share.vectors(mask, d).any(axis=-1)
  if codebook.shape[0] > np.iinfo(indices.dtype).max + 1 or np.any(indices[present] >= codebook.shape[0]):
    raise ValueError(f"{name}: an index is >= the {codebook.shape[0]} vectors of the codebook")
  if np.any(indices[~present]):
    raise ValueError(f"{name}: indices must be 0 for vectors without kept weights, or they would not survive "
                     f"the round trip")
  return codebook, indices, mask


def vector_ids(positions: np.ndarray, shape: tuple[int, ...], vector_size: int) -> np.ndarray:
  """The vector (flat in [neurons, vectors], `share.vector_grid`) of each flat neuron-major position."""
  _, fan_in, count = share.vector_grid(shape, vector_size)
  neuron, offset = np.divmod(positions, max(fan_in, 1))
  return neuron * count + offset // vector_size


def escaped_fields(positions: np.ndarray, index_bits: int) -> np.ndarray:
  """Index fields of kept positions where field 2**b - 1 is a filler (a jump of 2**b - 1, no weight).

  A kernel of vectors has no weight symbol per entry to mark its fillers with,
  so the field does: a kept weight `gap` positions after the previous entry takes
  f = (gap - 1) // (2**b - 1) fillers, then its own field (gap - 1) % (2**b - 1).
  """
  span = (1 << index_bits) - 1
  gap_1 = np.diff(positions, prepend=-1) - 1
  fillers = gap_1 // span
  own = np.cumsum(fillers + 1) - 1
  fields = np.full(int(own[-1]) + 1 if positions.size else 0, span, np.int64)
  fields[own] = gap_1 % span
  return fields


def escaped_positions(fields: np.ndarray, index_bits: int, size: int) -> np.ndarray:
  """The kept positions `escaped_fields` coded; ValueError past the kernel's end."""
  span = (1 << index_bits) - 1
  filler = fields == span
  positions = np.cumsum(np.where(filler, span, fields.astype(np.int64) + 1)) - 1
  kept = positions[~filler]
  if kept.size and kept[-1] >= size:
    raise ValueError(f"the entries reach position {int(kept[-1])} of a kernel of {size} weights")
  return kept


def _auto_escaped_bits(positions: np.ndarray) -> int:
  """The width in AUTO_INDEX_BITS whose escaped fields code smallest (the weight stream does not depend on it)."""
  gap_1 = np.diff(positions, prepend=-1) - 1

  def size(bits: int) -> int:
    span = (1 << bits) - 1
    counts = np.bincount(gap_1 % span, minlength=1 << bits)
    counts[-1] += int(np.sum(gap_1 // span))
    lengths = _stored_lengths(counts)
    return -(-huffman.coded_bits(counts[:lengths.size], lengths) // 8) + lengths.size

  return min(AUTO_INDEX_BITS, key=size)


def _encode_vectors(kernel: SharedKernel, index_bits: int | str, name: str) -> tuple[EncodedLayer, dict[str, Any]]:
  """`encode_layer` of a kernel of vectors: escaped position fields, and one symbol (0..k-1) per vector kept."""
  codebook, indices, mask = _vector_arrays(kernel, name)
  shape, d = tuple(int(n) for n in mask.shape), kernel.vector_size
  positions = np.flatnonzero(neuron_major(mask))
  bits = _auto_escaped_bits(positions) if index_bits in ("auto", 0) else int(index_bits)
  fields = escaped_fields(positions, bits)
  ids = vector_ids(positions, shape, d)
  symbols = indices.ravel()[ids[np.diff(ids, prepend=-1) != 0]].astype(np.int64)
  weight_counts = np.bincount(symbols, minlength=codebook.shape[0])
  field_counts = np.bincount(fields, minlength=1 << bits)
  weight_lengths, index_lengths = _stored_lengths(weight_counts), _stored_lengths(field_counts)
  encoded = EncodedLayer(
      shape=shape, index_dtype=indices.dtype, codebook=codebook, index_bits=bits, entries=int(fields.size),
      weight_lengths=weight_lengths, weight_payload=huffman.encode(symbols, weight_lengths),
      index_lengths=index_lengths, index_payload=huffman.encode(fields, index_lengths), vector_size=d)
  return encoded, layer_stats(encoded, weight_counts, field_counts, kept=int(positions.size))


def layer_stats(encoded: EncodedLayer, weight_counts: np.ndarray, field_counts: np.ndarray,
                kept: int) -> dict[str, Any]:
  """The paper's per-layer columns (Tables 2-5); bits per weight or index are per entry, fillers included.

  P+Q stores each weight symbol in ceil(log2(k + 1)) bits, one more code than
  the k clusters for the filler, and each index in b bits; P+Q+H stores the
  Huffman codes plus their code-length tables.
  Both add the codebook (float32, or the kernel's narrower dtype), all its
  rows when there is one per group of channels, all k x d floats of vectors.
  A kernel of vectors stores ceil(log2(k)) bits per vector that keeps a
  weight (P+Q) and no filler symbols; its weight bits are per kept weight.
  """
  vector = encoded.vector_size > 1
  size, entries = math.prod(encoded.shape), encoded.entries
  k = encoded.codebook.shape[0] if vector else encoded.codebook.shape[-1]
  weight_bits = huffman.coded_bits(weight_counts[:encoded.weight_lengths.size], encoded.weight_lengths)
  index_bits = huffman.coded_bits(field_counts[:encoded.index_lengths.size], encoded.index_lengths)
  table_bits = 8 * (encoded.weight_lengths.size + encoded.index_lengths.size)
  fixed_width = (k - 1).bit_length() if vector else k.bit_length()  # ceil(log2(k)), or ceil(log2(k + 1)).
  symbols = int(weight_counts.sum()) if vector else entries
  codebook_bits = 8 * encoded.codebook.nbytes
  pq_bits = symbols * fixed_width + entries * encoded.index_bits + codebook_bits
  pqh_bits = weight_bits + index_bits + table_bits + codebook_bits

  def per_entry(bits: int) -> float:
    return bits / entries if entries else 0.0

  def per_weight(bits: int) -> float:
    return bits / kept if kept else 0.0

  vectors = {"vector_size": encoded.vector_size, "vectors": symbols,
             "weight_bits_pq": round(per_weight(symbols * fixed_width), 2)} if vector else {}

  def rate(bits: int) -> float:
    return 32 * size / bits if bits else math.inf

  return {"weights": size, "kept": kept, "kept_fraction": kept / size if size else 0.0, "clusters": k,
          "codebooks": encoded.codebook.shape[0] if encoded.codebook.ndim == 2 and not vector else 1,
          "entries": entries, "fillers": entries - kept,
          "weight_bits_pq": fixed_width, "weight_bits_pqh": per_entry(weight_bits),
          "index_bits_pq": encoded.index_bits, "index_bits_pqh": per_entry(index_bits),
          "weight_entropy": huffman.entropy(weight_counts), "index_entropy": huffman.entropy(field_counts),
          "bits_pq": pq_bits, "bits_pqh": pqh_bits,
          "compress_rate_pq": rate(pq_bits), "compress_rate_pqh": rate(pqh_bits),
          "codebook_bytes": encoded.codebook.nbytes,
          **vectors, **({"weight_bits_pqh": per_weight(weight_bits)} if vector else {})}


def aligned_zeros(size: int, dtype: np.dtype) -> np.ndarray:
  """A flat zero array whose data start on a 64-byte boundary.

  XLA:CPU takes such a buffer without a copy in `jax.device_put` (it aliases
  it): a decoded VGG19 goes to the device in 0.01 s instead of 0.1 s.
  """
  dtype = np.dtype(dtype)
  raw = np.zeros(size * dtype.itemsize + 64, np.uint8)
  start = -raw.ctypes.data % 64
  return raw[start:start + size * dtype.itemsize].view(dtype)


def decode_layer(encoded: EncodedLayer, dense: bool = False) -> SharedKernel | np.ndarray:
  """The SharedKernel that `encode_layer` encoded, bit for bit; ValueError if the entries do not fit it.

  With `dense`, the kernel it stands for instead (codebook values where kept,
  0 elsewhere, in the codebook's dtype), built without its indices and mask.
  """
  if encoded.vector_size > 1:
    return _decode_vectors(encoded, dense)
  k, size = encoded.codebook.shape[-1], math.prod(encoded.shape)
  symbols = huffman.decode(encoded.weight_payload, encoded.weight_lengths, encoded.entries)
  fields = huffman.decode(encoded.index_payload, encoded.index_lengths, encoded.entries)
  if symbols.size and int(symbols.max()) > k:
    raise ValueError(f"weight symbol {int(symbols.max())} names no cluster of {k}")
  if fields.size and int(fields.max()) >= 1 << encoded.index_bits:
    raise ValueError(f"index field {int(fields.max())} does not fit {encoded.index_bits} bits")
  kept = kernel_positions(absolute_positions(symbols, fields, size), encoded.shape)
  if dense:
    weights = aligned_zeros(size, encoded.codebook.dtype)
    clusters = symbols[symbols != 0] - 1
    if encoded.group_size:
      clusters = clusters + share.row_offsets(kept, encoded.shape[-1], encoded.group_size, k)
    weights[kept] = encoded.codebook.reshape(-1)[clusters]
    return weights.reshape(encoded.shape)
  mask = np.zeros(size, bool)
  mask[kept] = True
  indices = np.zeros(size, encoded.index_dtype)
  indices[kept] = symbols[symbols != 0] - 1
  return SharedKernel(codebook=encoded.codebook.copy(), indices=indices.reshape(encoded.shape),
                      mask=mask.reshape(encoded.shape), group_size=encoded.group_size)


def _decode_vectors(encoded: EncodedLayer, dense: bool) -> SharedKernel | np.ndarray:
  """`decode_layer` of a kernel of vectors: positions first, which say how many vector symbols follow."""
  (k, d), size = encoded.codebook.shape, math.prod(encoded.shape)
  fields = huffman.decode(encoded.index_payload, encoded.index_lengths, encoded.entries)
  if fields.size and int(fields.max()) >= 1 << encoded.index_bits:
    raise ValueError(f"index field {int(fields.max())} does not fit {encoded.index_bits} bits")
  positions = escaped_positions(fields, encoded.index_bits, size)
  ids = vector_ids(positions, encoded.shape, d)
  first = np.diff(ids, prepend=-1) != 0
  symbols = huffman.decode(encoded.weight_payload, encoded.weight_lengths, int(first.sum()))
  if symbols.size and int(symbols.max()) >= k:
    raise ValueError(f"weight symbol {int(symbols.max())} names no vector of {k}")
  kept = kernel_positions(positions, encoded.shape)
  if dense:
    _, fan_in, _ = share.vector_grid(encoded.shape, d)
    weights = aligned_zeros(size, encoded.codebook.dtype)
    weights[kept] = encoded.codebook.reshape(-1)[symbols[np.cumsum(first) - 1] * d + positions % max(fan_in, 1) % d]
    return weights.reshape(encoded.shape)
  neurons, _, count = share.vector_grid(encoded.shape, d)
  mask = np.zeros(size, bool)
  mask[kept] = True
  indices = np.zeros(neurons * count, encoded.index_dtype)
  indices[ids[first]] = symbols
  return SharedKernel(codebook=encoded.codebook.copy(), indices=indices.reshape(neurons, count),
                      mask=mask.reshape(encoded.shape), vector_size=d)


def kernel_positions(positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Flat neuron-major positions as flat C-order positions of the kernel of `shape` (the inverse of `neuron_major`).

  Only the kept weights move: converting their positions and scattering into
  the kernel's own layout is 3-5x faster than transposing whole kernels (0.4 s
  of 0.87 s on VGG19 before).
  """
  if len(shape) <= 1:
    return positions
  outputs = shape[-1]
  inner = math.prod(shape[:-1])
  neuron, offset = np.divmod(positions, inner) if inner else (positions, positions)
  return offset * outputs + neuron


# The file: struct packing on the way out, a bounds-checked reader on the way back.

def _text(value: str, width: str = "H") -> bytes:
  data = value.encode("utf-8")
  return struct.pack(f"<{width}", len(data)) + data


def _dtype_text(dtype: np.dtype) -> bytes:
  """numpy's dtype.str ("<f4"), or an ml_dtypes name ("bfloat16"), whose dtype.str ("<V2") does not name it."""
  return _text(dtype.name if dtype.kind == "V" else dtype.str, "B")


def _array_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
  return _dtype_text(dtype) + struct.pack(f"<B{len(shape)}Q", len(shape), *shape)


def _little_endian_bytes(array: np.ndarray) -> bytes:
  """The array's data in C order, each element little-endian (ml_dtypes' types through their unsigned bits)."""
  if array.dtype.kind == "V":
    bits = f"u{array.dtype.itemsize}"
    return np.ascontiguousarray(array).view(f"={bits}").astype(f"<{bits}").tobytes()
  return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _key(key: str | int, version: int) -> bytes:
  if version == 1:
    return _text(key)
  return struct.pack("<B", INT_KEY if isinstance(key, int) else STR_KEY) + _text(str(key))


def _stream(lengths: np.ndarray, payload: bytes) -> bytes:
  return struct.pack("<I", lengths.size) + lengths.astype(np.uint8).tobytes() + struct.pack("<Q", len(payload)) + payload


def _record_body(keys: tuple[str | int, ...], leaf: Any, encoded: EncodedLayer | None, version: int) -> bytes:
  """A record's body: the key path, the kind, and the leaf's data."""
  body = struct.pack("<H", len(keys)) + b"".join(_key(key, version) for key in keys)
  if encoded is not None:
    codebook = (encoded.codebook.astype("<f4").tobytes() if version == 1
                else _dtype_text(encoded.codebook.dtype) + _little_endian_bytes(encoded.codebook))
    vector = encoded.vector_size > 1
    groups = (struct.pack("<II", encoded.codebook.shape[0], encoded.group_size) if encoded.group_size
              else struct.pack("<B", encoded.vector_size) if vector else b"")
    kind = GROUPED if encoded.group_size else VECTOR if vector else SHARED
    return (body + struct.pack("<B", kind) + _array_header(encoded.index_dtype, encoded.shape)
            + struct.pack("<IB", encoded.codebook.shape[0 if vector else -1], encoded.index_bits) + groups
            + codebook + struct.pack("<Q", encoded.entries)
            + _stream(encoded.weight_lengths, encoded.weight_payload)
            + _stream(encoded.index_lengths, encoded.index_payload))
  if leaf is traverse_util.empty_node:
    return body + struct.pack("<B", EMPTY)
  array = np.asarray(leaf)
  data = _little_endian_bytes(array)
  dtype = array.dtype if array.dtype.kind == "V" else array.dtype.newbyteorder("<")
  return body + struct.pack("<B", RAW) + _array_header(dtype, array.shape) + struct.pack("<Q", len(data)) + data


def _metadata_body(metadata: dict[str, Any]) -> bytes:
  """The metadata record's body: depth 0, kind METADATA, then the JSON object's UTF-8 text."""
  if not isinstance(metadata, dict):
    raise TypeError(f"metadata must be a dict (a JSON object); got {type(metadata).__name__}")
  try:
    text = json.dumps(metadata, allow_nan=False, separators=(",", ":"))
  except (TypeError, ValueError) as error:
    raise TypeError(f"metadata must hold JSON values only (str keys, numbers, text, lists, dicts): {error}") from error
  data = text.encode("utf-8")
  if len(data) > MAX_METADATA_BYTES - 3:
    raise ValueError(f"metadata of {len(data)} bytes as JSON; at most {MAX_METADATA_BYTES - 3} fit a metadata record")
  return struct.pack("<HB", 0, METADATA) + data


def _framed(body: bytes) -> bytes:
  """length, body, CRC32 of both."""
  head = struct.pack("<Q", len(body))
  return head + body + struct.pack("<I", zlib.crc32(head + body))


def _is_int_key(key: Any) -> bool:
  return isinstance(key, numbers.Integral) and not isinstance(key, bool)


def _storable_dtype(dtype: np.dtype) -> bool:
  return dtype.kind in _RAW_KINDS or (dtype.kind == "V" and dtype.name in ML_DTYPES)


def _leaves(variables: Any) -> dict[tuple[str | int, ...], Any]:
  """The tree's leaves by key path, in order, empty dicts included; fails on what cannot be stored.

  An nnx.State becomes its pure dict and boxed leaves (LogicallyPartitioned) their values first.
  """
  variables = flax_trees.unbox(flax_trees.pure(variables))
  if not isinstance(variables, dict):
    raise TypeError(f"variables must be a (nested) dict or an nnx.State; got {type(variables).__name__}")
  flat = traverse_util.flatten_dict(variables, keep_empty_nodes=True)
  for keys, leaf in flat.items():
    name = "/".join(map(str, keys))
    if not all(isinstance(key, str) or _is_int_key(key) for key in keys):
      raise TypeError(f"{name}: dict keys must be strings or integers; got {[type(key).__name__ for key in keys]}")
    if isinstance(leaf, SharedKernel) or leaf is traverse_util.empty_node:
      continue
    if not isinstance(leaf, (np.ndarray, jax.Array)) or not _storable_dtype(np.asarray(leaf).dtype):
      kind = getattr(leaf, "dtype", type(leaf).__name__)
      raise TypeError(f"{name}: cannot store a leaf of {kind}; valid: SharedKernel, or a numpy or jax "
                      f"array of bool, integers, floats, complex or {', '.join(ML_DTYPES)}")
  return {tuple(int(key) if _is_int_key(key) else key for key in keys): leaf for keys, leaf in flat.items()}


def _version(flat: dict[tuple[str | int, ...], Any]) -> int:
  """1 when the tree fits version 1 (string keys, float32 codebooks, numpy-named dtypes), else 2.

  So a plain float32 linen tree gives the same bytes as before version 2 existed.
  """
  for keys, leaf in flat.items():
    if any(isinstance(key, int) for key in keys):
      return 2
    if isinstance(leaf, SharedKernel):
      if np.asarray(leaf.codebook).dtype != np.float32:
        return 2
    elif leaf is not traverse_util.empty_node and np.asarray(leaf).dtype.kind == "V":
      return 2
  return 1


RAW_FLOAT_DTYPES = ("float32", "float16")  # codec.raw_dtype: the precision of raw floating leaves in a file.


def narrow_raw_floats(variables: Any, dtype: str) -> Any:
  """`variables` with each raw float32 leaf (biases, BatchNorm) as `dtype` where all its values stay finite.

  The file stores every raw leaf with its own dtype, so a float16 leaf needs no
  new record kind: it reads back as float16. At 1/8 width, VGG19's biases and
  BatchNorm take 16 KB of a 40 KB file as float32. A leaf whose values overflow
  float16 (|x| > 65504) stays float32.
  """
  if dtype not in RAW_FLOAT_DTYPES:
    raise ConfigError(f"codec.raw_dtype={dtype!r} is not a raw float precision; valid: {', '.join(RAW_FLOAT_DTYPES)}")
  if dtype == "float32":
    return variables

  def narrow(leaf):
    narrowed = None if isinstance(leaf, SharedKernel) else _narrowed(leaf, dtype)
    return leaf if narrowed is None else narrowed

  return _map_leaves(variables, narrow)


def narrow_codebooks(variables: Any, dtype: str) -> Any:
  """`variables` with each float32 codebook of a SharedKernel as `dtype` where all its centroids stay finite.

  A codebook stores its own dtype (format version 2), so nothing else changes:
  the kernel reads back with a float16 codebook and computes as float32 again.
  On LeNet-300-100 at 4 bits the codebooks are 5% of a 10 KB file; float16
  moves each centroid by at most 2^-11 of its value.
  """
  if dtype not in RAW_FLOAT_DTYPES:
    raise ConfigError(f"codec.codebook_dtype={dtype!r} is not a codebook precision; "
                      f"valid: {', '.join(RAW_FLOAT_DTYPES)}")
  if dtype == "float32":
    return variables

  def narrow(leaf):
    narrowed = _narrowed(leaf.codebook, dtype) if isinstance(leaf, SharedKernel) else None
    return leaf if narrowed is None else leaf.replace(codebook=narrowed)

  return _map_leaves(variables, narrow)


def _narrowed(values: Any, dtype: str) -> np.ndarray | None:
  """float32 `values` as `dtype`; None for other dtypes, or where a finite value would overflow (float16: 65504)."""
  values = np.asarray(values)
  if values.dtype != np.float32:
    return None
  narrowed = values.astype(dtype)
  return narrowed if np.all(np.isfinite(narrowed) | ~np.isfinite(values)) else None


def _map_leaves(variables: Any, fn: Callable[[Any], Any]) -> Any:
  """`fn` of every leaf, SharedKernels whole, in the tree's own key order (jax.tree.map would sort the keys)."""
  flat = traverse_util.flatten_dict(variables, keep_empty_nodes=True)
  return traverse_util.unflatten_dict({keys: leaf if leaf is traverse_util.empty_node else fn(leaf)
                                       for keys, leaf in flat.items()})


def write(path: str | Path, variables: Any, index_bits: IndexBits = 5,
          metadata: dict[str, Any] | None = None, deflate: bool = False) -> Summary:
  """Stores a Flax variables tree, SharedKernel leaves coded, others raw; returns what it took.

  Everything is encoded in memory before the file is touched, so a bad leaf or
  width leaves any existing file as it was.

  Args:
    path: the file to write (replaced atomically).
    variables: nested dicts of SharedKernel and numpy/jax arrays, e.g. {"params": ..., "batch_stats": ...};
      boxed leaves are stored unboxed, an nnx.State as its pure dict.
    index_bits: b for the relative indices: 1..16, "auto" or 0 (the config's word for auto), or
      (regex, b) pairs over "/"-joined paths.
    metadata: a JSON object stored first (format version 3), e.g. what `dc_jax.loading.describe` gives;
      None writes version 1 or 2 as before metadata existed.
    deflate: store that file DEFLATE-compressed (format version 4): its names, shapes, code-length
      tables and raw leaves shrink; the Huffman-coded streams stay as they are.
  """
  content, summary = encode(variables, index_bits, metadata, deflate)
  atomic.write_bytes(Path(path), content)
  return summary


def encode(variables: Any, index_bits: IndexBits = 5, metadata: dict[str, Any] | None = None,
           deflate: bool = False) -> tuple[bytes, Summary]:
  """The bytes `write` stores and its Summary, without a file: for a caller that writes them itself (or not)."""
  check_index_bits(index_bits)
  flat = _leaves(variables)
  version = _version(flat) if metadata is None else METADATA_VERSION
  if any(isinstance(leaf, SharedKernel) and leaf.group_size for leaf in flat.values()):
    version, metadata = GROUPED_VERSION, {} if metadata is None else metadata  # Version 5 starts with metadata.
  if any(isinstance(leaf, SharedKernel) and leaf.vector_size > 1 for leaf in flat.values()):
    version, metadata = VECTOR_VERSION, {} if metadata is None else metadata  # So does version 6.
  records = [] if metadata is None else [_framed(_metadata_body(metadata))]
  layers, dense_bytes, raw_bytes = [], 0, 0
  for keys, leaf in flat.items():
    name = "/".join(map(str, keys))
    encoded = None
    if isinstance(leaf, SharedKernel):
      encoded, row = encode_layer(leaf, layer_index_bits(index_bits, name), name)
      dense_bytes += 4 * row["weights"]
    elif leaf is not traverse_util.empty_node:
      array = np.asarray(leaf)
      floating = array.dtype.kind == "f" or array.dtype.name in ML_DTYPES[:6]
      dense_bytes += 4 * array.size if floating else array.nbytes  # Floats count as float32.
      raw_bytes += array.nbytes
    records.append(_framed(_record_body(keys, leaf, encoded, version)))
    if encoded is not None:
      layers.append({"layer": name, **row, "record_bytes": len(records[-1])})
  header = _HEADER.pack(MAGIC, version, len(records))
  content = header + struct.pack("<I", zlib.crc32(header)) + b"".join(records)
  content += struct.pack("<I", zlib.crc32(content))
  if deflate:
    content = deflated(content)
  file_bytes = len(content)
  weights, kept = sum(r["weights"] for r in layers), sum(r["kept"] for r in layers)
  pq_bits, pqh_bits = sum(r["bits_pq"] for r in layers), sum(r["bits_pqh"] for r in layers)
  totals = {"weights": weights, "kept": kept, "kept_fraction": kept / weights if weights else 0.0,
            "entries": sum(r["entries"] for r in layers),
            "compress_rate_pq": 32 * weights / pq_bits if pq_bits else math.inf,
            "compress_rate_pqh": 32 * weights / pqh_bits if pqh_bits else math.inf,
            "raw_bytes": raw_bytes, "dense_bytes": dense_bytes, "file_bytes": file_bytes,
            "compression_ratio": dense_bytes / file_bytes}
  return content, Summary(layers, totals)


class _Reader:
  """Reads fields off a byte string; running past its end is a DataError naming the file and record."""

  def __init__(self, data: bytes | memoryview, where: str):
    self.data, self.offset, self.where = memoryview(data), 0, where

  def take(self, size: int) -> memoryview:
    if size > len(self.data) - self.offset:
      raise DataError(f"{self.where}: truncated: needs {size} bytes at offset {self.offset}, "
                      f"{len(self.data) - self.offset} left")
    self.offset += size
    return self.data[self.offset - size:self.offset]

  def unpack(self, fmt: str) -> tuple:
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

  def text(self, width: str = "H") -> str:
    (size,) = self.unpack(width)
    try:
      return bytes(self.take(size)).decode("utf-8")
    except UnicodeDecodeError as error:
      raise DataError(f"{self.where}: a name is not UTF-8: {error}") from error

  def dtype(self, kinds: str, version: int = 1) -> np.dtype:
    name = self.text("B")
    if version >= 2 and name in ML_DTYPES:
      return np.dtype(getattr(ml_dtypes, name))
    try:
      dtype = np.dtype(name)
    except (TypeError, ValueError) as error:
      raise DataError(f"{self.where}: unknown dtype {name!r}") from error
    if dtype.kind not in kinds or dtype.byteorder == ">":
      raise DataError(f"{self.where}: dtype {name!r} is not a little-endian or byte-order-free dtype "
                      f"of the kinds {kinds!r}")
    return dtype

  def stream(self) -> tuple[np.ndarray, bytes]:
    (size,) = self.unpack("I")
    lengths = np.frombuffer(self.take(size), np.uint8).copy()
    (payload,) = self.unpack("Q")
    return lengths, bytes(self.take(payload))


def _from_little_endian(data: memoryview, dtype: np.dtype) -> np.ndarray:
  """The inverse of `_little_endian_bytes`, flat."""
  if dtype.kind == "V":
    bits = f"u{dtype.itemsize}"
    return np.frombuffer(data, f"<{bits}").astype(f"={bits}").view(dtype)
  return np.frombuffer(data, dtype).copy()


def _read_key(reader: _Reader, version: int) -> str | int:
  if version == 1:
    return reader.text()
  (kind,) = reader.unpack("B")
  text = reader.text()
  if kind == STR_KEY:
    return text
  if kind == INT_KEY and re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
    return int(text)
  raise DataError(f"{reader.where}: key type {kind} with text {text!r}; valid: {STR_KEY} (text), "
                  f"{INT_KEY} (a decimal integer)")


def _parse_record(body: memoryview, where: str, version: int = 1,
                  dense: bool = False) -> tuple[tuple[str | int, ...], Any]:
  """A record body back into (key path, leaf); a shared kernel as a dense array with `dense`."""
  reader = _Reader(body, where)
  (depth,) = reader.unpack("H")
  if depth == 0:
    raise DataError(f"{where}: a record needs a key path of depth >= 1; this one has depth 0")
  keys = tuple(_read_key(reader, version) for _ in range(depth))
  where = f"{where} ({'/'.join(map(str, keys))!r})"
  reader.where = where
  (kind,) = reader.unpack("B")
  if kind == EMPTY:
    leaf = traverse_util.empty_node
  elif kind in (RAW, SHARED) or (kind == GROUPED and version >= GROUPED_VERSION) or (
      kind == VECTOR and version >= VECTOR_VERSION):
    dtype = reader.dtype(_RAW_KINDS if kind == RAW else "u", version)
    (ndim,) = reader.unpack("B")
    shape = reader.unpack(f"{ndim}Q")
    if kind != RAW and math.prod(shape) > MAX_KERNEL_WEIGHTS:  # Raw leaves are bounded by their bytes.
      raise DataError(f"{where}: a shared kernel of shape {list(shape)} has more than {MAX_KERNEL_WEIGHTS} weights")
    if kind == RAW:
      (size,) = reader.unpack("Q")
      if size != math.prod(shape) * dtype.itemsize:
        raise DataError(f"{where}: {size} bytes do not hold {dtype}{list(shape)}")
      leaf = _from_little_endian(reader.take(size), dtype).reshape(shape)
    else:
      k, bits = reader.unpack("IB")
      groups, group_size = reader.unpack("II") if kind == GROUPED else (0, 0)
      (vector_size,) = reader.unpack("B") if kind == VECTOR else (1,)
      if not 1 <= vector_size <= share.MAX_VECTOR_SIZE or (kind == VECTOR and vector_size == 1):
        raise DataError(f"{where}: vectors of {vector_size} weights; valid: 2..{share.MAX_VECTOR_SIZE}")
      if kind == GROUPED and (not shape or group_size < 1 or groups != -(-shape[-1] // group_size)):
        raise DataError(f"{where}: {groups} codebooks of {group_size} output channels do not cover the "
                        f"{shape[-1] if shape else 0} of shape {list(shape)}")
      codebook_dtype = np.dtype("<f4") if version == 1 else reader.dtype("f", version)
      if codebook_dtype.name not in CODEBOOK_DTYPES:
        raise DataError(f"{where}: codebook dtype {codebook_dtype}; valid: {', '.join(CODEBOOK_DTYPES)}")
      codebook_shape = (groups, k) if groups else (k, vector_size) if kind == VECTOR else (k,)
      codebook = _from_little_endian(reader.take(codebook_dtype.itemsize * math.prod(codebook_shape)), codebook_dtype)
      codebook = codebook.astype(codebook_dtype.newbyteorder("=")).reshape(codebook_shape)
      (entries,) = reader.unpack("Q")
      weight_lengths, weight_payload = reader.stream()
      index_lengths, index_payload = reader.stream()
      if not 1 <= bits <= MAX_INDEX_BITS or k > np.iinfo(dtype).max + 1 or (kind == VECTOR and not shape):
        raise DataError(f"{where}: index width {bits} or {k} clusters for {dtype} indices is not valid")
      try:
        leaf = decode_layer(EncodedLayer(shape, dtype, codebook, bits, entries, weight_lengths, weight_payload,
                                         index_lengths, index_payload, group_size, vector_size), dense)
      except ValueError as error:
        raise DataError(f"{where}: {error}") from error
  else:
    raise DataError(f"{where}: unknown record kind {kind}; valid: {RAW} raw, {SHARED} shared, {EMPTY} empty dict"
                    + (f", {METADATA} metadata (record 0 only)" if version >= METADATA_VERSION else "")
                    + (f", {GROUPED} shared with a codebook per group" if version >= GROUPED_VERSION else "")
                    + (f", {VECTOR} shared vectors" if version >= VECTOR_VERSION else ""))
  if reader.offset != len(body):
    raise DataError(f"{where}: {len(body) - reader.offset} bytes left over after the record's fields")
  return keys, leaf


def _stored_name(body: memoryview, version: int) -> str:
  """The key path at the start of a body that failed its CRC, as far as it can be read."""
  try:
    reader = _Reader(body, "")
    (depth,) = reader.unpack("H")
    names = []
    for _ in range(depth):
      if version >= 2:
        reader.unpack("B")
      names.append(bytes(reader.take(reader.unpack("H")[0])).decode("utf-8", "replace"))
    return "/".join(names)
  except DataError:
    return "?"


def _check_new_path(keys: tuple[str | int, ...], i: int, leaves: dict[tuple[str | int, ...], int],
                    dicts: dict[tuple[str | int, ...], int], where: str) -> None:
  """Record i's path must be new, and neither a dict of an earlier record's path nor under an earlier leaf.

  `leaves` maps each earlier record's path to its record, `dicts` each proper prefix of one to its first record.
  """
  name = "/".join(map(str, keys))
  if keys in leaves:
    raise DataError(f"{where} ({name!r}) repeats the path of record {leaves[keys]}")
  if keys in dicts:
    raise DataError(f"{where} ({name!r}) is a leaf, but record {dicts[keys]} holds a leaf under it")
  above = next((keys[:n] for n in range(1, len(keys)) if keys[:n] in leaves), None)
  if above is not None:
    raise DataError(f"{where} ({name!r}) lies under the leaf of record {leaves[above]} "
                    f"({'/'.join(map(str, above))!r})")
  leaves[keys] = i
  for n in range(1, len(keys)):
    dicts.setdefault(keys[:n], i)


def deflated(content: bytes) -> bytes:
  """A file of version 1, 2, 3, 5 or 6 as a version-4 file: header, its DEFLATE stream (RFC 1951), CRC32 of all before.

  Huffman-coded streams do not shrink; what does is everything around them:
  LeNet-300-100 files of 10-12 KB by 2.7-4.3%, VGG19 at 1/8 width (33-51 KB) by 13-17%.
  """
  header = _DEFLATED_HEADER.pack(MAGIC, DEFLATED_VERSION, len(content))
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # Raw DEFLATE: the CRCs here replace zlib's own.
  data = header + struct.pack("<I", zlib.crc32(header)) + compressor.compress(content) + compressor.flush()
  return data + struct.pack("<I", zlib.crc32(data))


def _is_deflated(data: memoryview) -> bool:
  return len(data) >= 10 and bytes(data[:8]) == MAGIC and struct.unpack("<H", data[8:10])[0] == DEFLATED_VERSION


def _inflated(data: memoryview, path: Path) -> memoryview:
  """The file a version-4 file holds, checked; a file of another version as it is."""
  if not _is_deflated(data):
    return data
  reader = _Reader(data, f"{path}: header")
  _, _, size = reader.unpack(_DEFLATED_HEADER.format[1:])
  (crc,) = reader.unpack("I")
  if crc != zlib.crc32(data[:_DEFLATED_HEADER.size]):
    raise DataError(f"{path}: header CRC mismatch: the file is corrupt")
  if len(data) < reader.offset + 4 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
    raise DataError(f"{path}: file CRC32 mismatch: the file is corrupt or truncated")
  if size > MAX_INFLATED_BYTES:
    raise DataError(f"{path}: holds a file of {size} bytes; a reader takes at most {MAX_INFLATED_BYTES}")
  inflater = zlib.decompressobj(-15)
  try:
    inner = inflater.decompress(data[reader.offset:-4], size + 1)  # One byte more than said shows a longer file.
  except zlib.error as error:
    raise DataError(f"{path}: the DEFLATE stream does not decode: {error}") from error
  if len(inner) != size or not inflater.eof or inflater.unused_data:
    raise DataError(f"{path}: the DEFLATE stream holds {len(inner)} bytes, not the {size} its header says, "
                    f"or bytes follow its end")
  if _is_deflated(memoryview(inner)):
    raise DataError(f"{path}: a version-4 file holds another version-4 file; it holds one of version 1, 2, 3, 5 or 6")
  return memoryview(inner)


def _read_bytes(path: Path, size: int = -1) -> memoryview:
  try:
    with open(path, "rb") as file:
      return memoryview(file.read(size))
  except OSError as error:
    raise DataError(f"{path}: cannot read the compressed model: {error.strerror}") from error


def _header(reader: _Reader, path: Path) -> tuple[int, int]:
  """(version, record count) from a checked header."""
  magic, version, count = reader.unpack(_HEADER.format[1:])
  if magic != MAGIC:
    raise DataError(f"{path}: not a dc_jax compressed model: starts with {bytes(magic)!r}, not {MAGIC!r}")
  (crc,) = reader.unpack("I")
  if crc != zlib.crc32(reader.data[:_HEADER.size]):
    raise DataError(f"{path}: header CRC mismatch: the file is corrupt")
  if version not in VERSIONS:
    raise DataError(f"{path}: format version {version}; this reader knows versions {VERSIONS}")
  if version >= METADATA_VERSION and count == 0:
    raise DataError(f"{path}: a version-{version} file starts with its metadata record; this one has no records")
  return version, count


def _record(reader: _Reader, i: int, version: int, path: Path) -> memoryview:
  """Record i's body, its CRC checked."""
  reader.where = f"{path}: record {i}"
  start = reader.offset
  (size,) = reader.unpack("Q")
  body = reader.take(size)
  (crc,) = reader.unpack("I")
  if crc != zlib.crc32(reader.data[start:reader.offset - 4]):
    name = "metadata" if version >= METADATA_VERSION and i == 0 else _stored_name(body, version)
    raise DataError(f"{path}: record {i} ({name!r}) is corrupt: CRC32 mismatch")
  return body


def _parse_metadata(body: memoryview, where: str) -> dict[str, Any]:
  """The JSON object of a metadata record (depth 0, kind METADATA)."""
  reader = _Reader(body, where)
  depth, kind = reader.unpack("HB")
  if depth != 0 or kind != METADATA:
    raise DataError(f"{where}: a version-{METADATA_VERSION} file starts with a metadata record "
                    f"(depth 0, kind {METADATA}); this one has depth {depth}, kind {kind}")
  try:
    metadata = json.loads(bytes(body[reader.offset:]).decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as error:
    raise DataError(f"{where}: the metadata is not JSON text: {error}") from error
  if not isinstance(metadata, dict):
    raise DataError(f"{where}: the metadata is a JSON {type(metadata).__name__}, not an object")
  return metadata


def read_metadata(path: str | Path) -> dict[str, Any] | None:
  """The metadata `write` stored (format version 3), or None for a file of version 1 or 2.

  Reads the header and the first record only, so it costs nothing next to
  `read`; DataError as `read` on a corrupt header or metadata record.
  """
  path = Path(path)
  reader = _Reader(_read_bytes(path, _HEADER.size + 4), f"{path}: header")
  if _is_deflated(reader.data):  # Compressed whole: inflated whole.
    reader = _Reader(_inflated(_read_bytes(path), path), f"{path}: header")
    version, _ = _header(reader, path)
    return _parse_metadata(_record(reader, 0, version, path), f"{path}: record 0") if version >= 3 else None
  version, _ = _header(reader, path)
  if version < METADATA_VERSION:
    return None
  with open(path, "rb") as file:  # The first record only: its length, body and CRC.
    file.seek(_HEADER.size + 4)
    head = file.read(8)
    size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    data = memoryview(bytes(reader.data) + head + file.read(min(size, MAX_METADATA_BYTES) + 4))
  reader = _Reader(data, f"{path}: record 0")
  reader.offset = _HEADER.size + 4
  if size > MAX_METADATA_BYTES:
    raise DataError(f"{path}: record 0: metadata of {size} bytes; a reader takes at most {MAX_METADATA_BYTES}")
  return _parse_metadata(_record(reader, 0, version, path), f"{path}: record 0")


def read(path: str | Path, dense: bool = False) -> dict[str, Any]:
  """The variables tree `write` stored: numpy arrays and SharedKernels of numpy arrays, bit for bit.

  With `dense`, each SharedKernel comes back as the dense array it stands for
  (`SharedKernel.materialize`'s values, in the codebook's dtype), decoded
  straight into it: what inference in the dense form needs, in less time.

  Reads format versions 1, 2, 3, 5 and 6 (whose metadata record `read_metadata`
  returns), and 4, a DEFLATE-compressed file of one of them. Boxed leaves come back unboxed (`flax_trees.rebox` puts a
  template's boxes back); integer keys come back as integers, so the pure dict
  of an nnx.State loads back with `flax_trees.load`.

  Raises DataError, naming the file and the record, on a wrong magic or version,
  a truncated file, a CRC mismatch, a record whose fields do not decode, a path
  stored twice or under another leaf, metadata that is not a JSON object or
  not first, or bytes after the last record.
  """
  path = Path(path)
  data = _inflated(_read_bytes(path), path)
  reader = _Reader(data, f"{path}: header")
  version, count = _header(reader, path)
  flat, leaves, dicts = {}, {}, {}
  for i in range(count):
    body = _record(reader, i, version, path)
    if version >= METADATA_VERSION and i == 0:
      _parse_metadata(body, f"{path}: record 0")
      continue
    keys, leaf = _parse_record(body, f"{path}: record {i}", version, dense)
    _check_new_path(keys, i, leaves, dicts, f"{path}: record {i}")
    flat[keys] = leaf
  reader.where = f"{path}: file CRC"
  end = reader.offset
  (crc,) = reader.unpack("I")
  if reader.offset != len(data):
    raise DataError(f"{path}: {len(data) - reader.offset} trailing bytes after the last of {count} records")
  if crc != zlib.crc32(data[:end]):
    raise DataError(f"{path}: file CRC32 mismatch: records are whole but not in the order or number written")
  return traverse_util.unflatten_dict(flat)
