"""Times our vectorised canonical Huffman coder against dahuffman (pure Python) on VGG19-sized streams.

  python bench/huffman.py [--symbols 16777216] [--clusters 32] [--dahuffman_symbols 1000000] [--repeats 3]

The stream is `--symbols` cluster indices (VGG19's fc6 has 16.8M weights)
drawn from a peaked distribution over `--clusters` codes, as trained weights
cluster. dahuffman decodes about 2 us per symbol, so it runs on the first
`--dahuffman_symbols` only; ours runs on that same prefix too, and speed ratios
compare the two on it. Times are medians of `--repeats` calls, the coders
taking turns, so that a burst of load from other processes does not decide a
ratio. Both must decode back to their input.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from dahuffman import HuffmanCodec

sys.path.insert(0, str(Path(__file__).parents[1]))
from dc_jax import huffman  # noqa: E402

_SYMBOLS = flags.DEFINE_integer("symbols", 16_777_216, "Symbols in the full stream.")
_CLUSTERS = flags.DEFINE_integer("clusters", 32, "Distinct symbols (k cluster codes).")
_DAHUFFMAN_SYMBOLS = flags.DEFINE_integer("dahuffman_symbols", 1_000_000,
                                          "Prefix of the stream that both coders time side by side.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the stream.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Calls per coder and direction; the median is reported.")


def peaked_stream(size: int, clusters: int, seed: int) -> np.ndarray:
  """Gaussian-peaked cluster indices: most weights sit in the middle clusters, as after k-means on a trained layer."""
  centre = np.arange(clusters) - (clusters - 1) / 2
  p = np.exp(-0.5 * (centre / (clusters / 8)) ** 2)
  return np.random.default_rng(seed).choice(clusters, size, p=p / p.sum()).astype(np.uint8)


def time_ours(symbols: np.ndarray, lengths: np.ndarray) -> tuple[float, float, int]:
  """(encode s, decode s, bytes) of our coder; fails unless the stream decodes back exactly."""
  start = time.perf_counter()
  data = huffman.encode(symbols, lengths)
  encoded = time.perf_counter()
  decoded = huffman.decode(data, lengths, symbols.size)
  decoded_at = time.perf_counter()
  if not np.array_equal(decoded, symbols):
    raise AssertionError("our decoder did not give back the stream")
  return encoded - start, decoded_at - encoded, len(data)


def time_dahuffman(symbols: np.ndarray) -> tuple[float, float, int]:
  """(encode s, decode s, bytes) of dahuffman on the same symbols (as Python ints, its input type)."""
  values = symbols.tolist()
  codec = HuffmanCodec.from_frequencies(dict(zip(*np.unique(symbols, return_counts=True))))
  start = time.perf_counter()
  data = codec.encode(values)
  encoded = time.perf_counter()
  decoded = codec.decode(data)
  decoded_at = time.perf_counter()
  if decoded != values:
    raise AssertionError("dahuffman did not give back the stream")
  return encoded - start, decoded_at - encoded, len(data)


def medians(runs: list[tuple[float, float, int]]) -> tuple[float, float, int]:
  """(median encode s, median decode s, bytes) over repeated runs of one coder."""
  return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2]


def report(name: str, n: int, encode_s: float, decode_s: float, size: int) -> None:
  print(f"{name:<28}{n:>12,}{encode_s:>9.3f}s{n / encode_s / 1e6:>9.2f}{decode_s:>9.3f}s"
        f"{n / decode_s / 1e6:>9.2f}{8 * size / n:>9.3f}")


def main(argv):
  del argv
  symbols = peaked_stream(_SYMBOLS.value, _CLUSTERS.value, _SEED.value)
  counts = np.bincount(symbols, minlength=_CLUSTERS.value)
  lengths = huffman.code_lengths(counts)
  print(f"stream: {symbols.size:,} symbols, {_CLUSTERS.value} clusters; entropy {huffman.entropy(counts):.3f} "
        f"bits/symbol, Huffman {huffman.coded_bits(counts, lengths) / symbols.size:.3f} bits/symbol, "
        f"longest code {lengths.max()} bits")
  print(f"median of {_REPEATS.value} calls each, the coders taking turns")
  print(f"{'coder':<28}{'symbols':>12}{'encode':>10}{'Msym/s':>9}{'decode':>10}{'Msym/s':>9}{'bits/sym':>9}")
  report("dc_jax.huffman (full)", symbols.size, *medians([time_ours(symbols, lengths) for _ in range(_REPEATS.value)]))
  prefix = symbols[:_DAHUFFMAN_SYMBOLS.value]
  prefix_lengths = huffman.code_lengths(np.bincount(prefix, minlength=_CLUSTERS.value))
  runs = [(time_ours(prefix, prefix_lengths), time_dahuffman(prefix)) for _ in range(_REPEATS.value)]
  ours, theirs = medians([ours for ours, _ in runs]), medians([theirs for _, theirs in runs])
  report("dc_jax.huffman (prefix)", prefix.size, *ours)
  report("dahuffman (prefix)", prefix.size, *theirs)  # Its bits include an end-of-file code.
  print(f"speed ours/dahuffman on the same {prefix.size:,} symbols: encode {theirs[0] / ours[0]:.1f}x, "
        f"decode {theirs[1] / ours[1]:.1f}x")
  print("both decode back to their input")


if __name__ == "__main__":
  app.run(main)
