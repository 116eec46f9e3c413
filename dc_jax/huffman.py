"""Canonical Huffman codes (Deep Compression Sec. 4): optimal code lengths, then encoding and decoding, vectorised.

Only the code lengths are stored: the codes follow from them canonically, as
in DEFLATE (RFC 1951, 3.2.2): ordered by (length, symbol), each code is the
previous one plus 1, shifted left when the length grows. Bits are packed most
significant first. Lengths are optimal (minimum total bits) among codes no
longer than `max_length` bits; when no code needs more, that is plain Huffman.

Nothing loops in Python over symbols or bits: encoding scatters each code into
32-bit words with `reduceat`, two symbols at a time; decoding finds where
every codeword starts from each word's exit map, computed for all words at
once (see `decode`). Python loops run over code lengths, bit offsets in a
word, codewords per word, fixed-point rounds and chunks of the stream only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_LENGTH = 24  # Default length limit: codes span at most 2 of the 32-bit words `encode` packs.
_WORD = 32  # Bits per word; decoding follows codewords one word at a time.
_LOG2_WORD = 5  # Bits of a bit offset within a word.
_CHUNK_SYMBOLS = 1 << 20  # Encoding works on this many symbols at a time to bound memory.
_CHUNK_WORDS = 1 << 13  # Decoding works on this many words (256 Kbit) at a time: its tables stay in cache.
_PAIR_SYMBOLS = 256  # Encoding packs symbols in pairs (a table of n**2 pair codes) for alphabets up to this size.
_TABLE_BITS = 18  # Decoding looks up code lengths in a table indexed by this many leading bits (2 x 256 KB).
# 18, not 16: relative-index streams of 8-bit fields have codes of up to 20 bits, and longer codes than the
# table take a slower search (VGG19 at k = 13, random masks: codec.read 0.54 -> 0.48 s at load average 12).
_ENTRY_ROUNDS = 24  # Rounds of fixed-point iteration for the words' entries before the exact scan takes over.


def code_lengths(frequencies: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
  """Optimal prefix-code lengths for symbols 0..n-1 (0 for absent symbols), no longer than `max_length`.

  Package-merge (Larmore & Hirschberg 1990) gives the minimum total bits among
  length-limited codes, which is Huffman's optimum whenever the limit does not
  bind. A lone symbol gets a 1-bit code, so that its stream still has a length.

  Args:
    frequencies: int[n] symbol counts (n may be 0).
    max_length: the longest code allowed, 1..32.

  Returns:
    uint8[n]: each symbol's code length; the code is complete (Kraft sum 1) when 2+ symbols occur.
  """
  freqs = np.asarray(frequencies)
  if freqs.ndim != 1 or not (np.issubdtype(freqs.dtype, np.integer) or freqs.size == 0):
    raise ValueError(f"frequencies must be a 1-D integer array; got {freqs.dtype}{list(freqs.shape)}")
  if freqs.size and freqs.min() < 0:
    raise ValueError(f"frequencies must be >= 0; got {freqs.min()}")
  if not 1 <= max_length <= _WORD:
    raise ValueError(f"max_length={max_length} is not a code length limit; valid: 1..{_WORD}")
  lengths = np.zeros(freqs.size, np.uint8)
  present = np.flatnonzero(freqs)
  if present.size <= 1:
    lengths[present] = 1
    return lengths
  if present.size > 2 ** max_length:
    raise ValueError(f"{present.size} symbols cannot all have codes of at most {max_length} bits")
  order = present[np.argsort(freqs[present], kind="stable")]
  weights = freqs[order].astype(np.int64)
  n = weights.size
  levels = min(max_length, n - 1)  # Codes of n - 1 bits are the longest any optimal code needs.
  # Lists from the deepest level up: the leaves merged with the pairs ("packages") of the list below.
  # Only how many leaves each list's prefix holds is kept: the chosen leaves are always a prefix.
  items = weights
  leaves_in_prefix = [np.arange(1, n + 1)]
  for _ in range(levels - 1):
    pairs = items[:items.size // 2 * 2].reshape(-1, 2).sum(axis=1)
    merged = np.concatenate([weights, pairs])
    rank = np.argsort(merged, kind="stable")  # Ties put leaves first.
    items = merged[rank]
    leaves_in_prefix.append(np.cumsum(rank < n))
  # The 2n - 2 cheapest items of the top list; each package taken takes both of its halves below.
  taken = 2 * n - 2
  depth = np.zeros(n, np.int64)
  for prefix in reversed(leaves_in_prefix):
    if taken == 0:
      break
    leaves = int(prefix[taken - 1])
    depth[:leaves] += 1
    taken = 2 * (taken - leaves)
  lengths[order] = depth
  return lengths


def entropy(frequencies: np.ndarray) -> float:
  """Shannon entropy of the symbol distribution in bits/symbol: the bound Huffman coding approaches."""
  freqs = np.asarray(frequencies, np.float64)
  freqs = freqs[freqs > 0]
  if freqs.size == 0:
    return 0.0
  p = freqs / freqs.sum()
  return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one symbol gives 0.0, not -0.0.


def coded_bits(frequencies: np.ndarray, lengths: np.ndarray) -> int:
  """Bits that symbols with these counts take under these code lengths."""
  return int(np.dot(np.asarray(frequencies, np.int64), np.asarray(lengths, np.int64)))


class _Canonical(NamedTuple):
  """A canonical code's tables: per symbol (codes) and per length 0..L (the rest)."""

  codes: np.ndarray  # uint64[n]: each symbol's code, right-aligned; 0 for absent symbols.
  max_length: int  # L, the longest code.
  first_code: np.ndarray  # int64[L+1]: the code of the first symbol of each length.
  first_rank: np.ndarray  # int64[L+1]: how many codes are shorter than each length.
  limit: np.ndarray  # uint64[L+1]: end (exclusive) of each length's codes, left-aligned to L bits.
  symbols: np.ndarray  # The present symbols ordered by (length, symbol), as the narrowest unsigned dtype.


def _canonical(lengths: np.ndarray) -> _Canonical:
  """The canonical code with these lengths; rejects lengths that are not a prefix code."""
  lengths = np.asarray(lengths)
  if lengths.ndim != 1 or (lengths.size and (lengths.min() < 0 or lengths.max() > _WORD)):
    raise ValueError(f"code lengths must be a 1-D array of 0..{_WORD}; got {lengths!r}")
  lengths = lengths.astype(np.int64)
  present = np.flatnonzero(lengths)
  max_length = int(lengths.max()) if present.size else 0
  count = np.bincount(lengths[present], minlength=max_length + 1)
  kraft = int(np.sum(count << (max_length - np.arange(max_length + 1))))
  if present.size >= 2 and kraft != 1 << max_length:
    raise ValueError(f"code lengths {np.bincount(lengths)[1:].tolist()} (codes per length 1..) "
                     f"do not form a complete prefix code")
  first_code = np.zeros(max_length + 1, np.int64)
  for length in range(1, max_length + 1):
    first_code[length] = (first_code[length - 1] + count[length - 1]) << 1
  first_rank = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
  limit = ((first_code + count) << (max_length - np.arange(max_length + 1))).astype(np.uint64)
  order = present[np.argsort(lengths[present], kind="stable")]
  codes = np.zeros(lengths.size, np.uint64)
  sorted_lengths = lengths[order]
  codes[order] = (first_code[sorted_lengths] + np.arange(order.size) - first_rank[sorted_lengths]).astype(np.uint64)
  symbols = order.astype(np.min_scalar_type(max(lengths.size - 1, 0)))
  return _Canonical(codes, max_length, first_code, first_rank, limit, symbols)


def codes(lengths: np.ndarray) -> np.ndarray:
  """Each symbol's canonical code (right-aligned, `lengths[s]` bits); 0 for symbols without a code."""
  return _canonical(lengths).codes


def _symbol_counts(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """How often each symbol occurs; ValueError naming the first one without a code."""
  low, high = int(symbols.min()), int(symbols.max())
  counts = np.bincount(symbols, minlength=lengths.size) if low >= 0 and high < lengths.size else None
  if counts is None or not np.all(lengths[counts > 0] > 0):
    coded = (symbols >= 0) & (symbols < lengths.size)
    coded[coded] = lengths[symbols[coded]] > 0
    raise ValueError(f"symbol {int(symbols[~coded][0])} has no code; coded symbols are "
                     f"{np.flatnonzero(lengths).tolist()}")
  return counts


def _units(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(units, unit lengths, unit codes): the symbols two at a time, where their codes fit 32 bits together.

  Halves the work of packing: a pair's code is the first code followed by the
  second, so the bits are the same. An odd last symbol is a unit of its own.
  """
  n = lengths.size
  if n > _PAIR_SYMBOLS or 2 * int(lengths.max()) > _WORD or symbols.size < 2:
    return symbols, lengths, codes
  pair_lengths = (lengths[:, None] + lengths[None, :]).ravel()
  pair_codes = ((codes[:, None] << lengths[None, :].astype(np.uint64)) | codes[None, :]).ravel()
  even = symbols.size - symbols.size % 2
  units = symbols[0:even:2].astype(np.intp) * n + symbols[1:even:2]
  if even < symbols.size:
    units = np.append(units, n * n + int(symbols[-1]))
  return units, np.concatenate([pair_lengths, lengths]), np.concatenate([pair_codes, codes])


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
  """The symbols' canonical codes, packed most significant bit first; the last byte is padded with 0 bits.

  Each code (or pair of codes, see `_units`) is shifted into place inside a
  64-bit window over the two 32-bit words it touches; codes never overlap, so
  OR-reducing them per word packs them.
  """
  table = _canonical(lengths)
  lengths = np.asarray(lengths, np.int64)
  symbols = np.asarray(symbols).ravel()
  if symbols.size == 0:
    return b""
  if not np.issubdtype(symbols.dtype, np.integer):
    raise ValueError(f"symbols must be integers; got {symbols.dtype}")
  total_bits = int(_symbol_counts(symbols, lengths) @ lengths)
  units, unit_lengths, unit_codes = _units(symbols, lengths, table.codes)
  left_aligned = unit_codes << (2 * _WORD - unit_lengths).astype(np.uint64)  # Codes in bits 63.. of a window.
  words = np.zeros(total_bits // _WORD + 2, np.uint64)
  offset = 0
  for start in range(0, units.size, _CHUNK_SYMBOLS):
    chunk = units[start:start + _CHUNK_SYMBOLS]
    ends = np.cumsum(np.take(unit_lengths, chunk))
    ends += offset
    begins = np.empty_like(ends)
    begins[0], begins[1:] = offset, ends[:-1]
    offset = int(ends[-1])
    word = begins >> _LOG2_WORD
    window = np.take(left_aligned, chunk) >> (begins & (_WORD - 1)).astype(np.uint64)  # Words (word, word + 1).
    firsts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
    # Units are at most 32 bits, so every word from the first to the last holds the start of one: slices suffice.
    packed = np.bitwise_or.reduceat(window, firsts)
    first, last = int(word[0]), int(word[-1]) + 1
    words[first:last] |= packed >> np.uint64(_WORD)
    words[first + 1:last + 1] |= packed & np.uint64(0xFFFFFFFF)
  return words.astype(">u4").tobytes()[:-(-total_bits // 8)]


def _lookup_tables(table: _Canonical) -> tuple[np.ndarray, np.ndarray, int]:
  """(length, symbol) of the code that the next `bits` bits of the stream start; length 0 where it is longer."""
  bits = min(table.max_length, _TABLE_BITS)
  prefixes = np.arange(1 << bits, dtype=np.uint64) << np.uint64(table.max_length - bits)
  lengths = np.searchsorted(table.limit, prefixes, side="right")
  lengths[lengths > bits] = 0
  codes = np.arange(1 << bits, dtype=np.int64) >> (bits - lengths)
  rank = np.clip(table.first_rank[lengths] + codes - table.first_code[lengths], 0, table.symbols.size - 1)
  return lengths.astype(np.uint8), table.symbols[rank], bits


def _symbols_at(table: _Canonical, symbol_table: np.ndarray, bits: int, pairs: np.ndarray,
                offsets: np.ndarray) -> np.ndarray:
  """The symbols whose codes start at these offsets of these words (`pairs`: each word and the next, uint64)."""
  ahead = pairs.view(np.int64) >> (2 * _WORD - bits - offsets)
  found = np.take(symbol_table, ahead & ((1 << bits) - 1))
  if table.max_length > bits:  # Codes longer than the table: their L-bit windows, searched.
    windows = pairs >> (2 * _WORD - table.max_length - offsets).astype(np.uint64)
    windows &= np.uint64((1 << table.max_length) - 1)
    length = np.searchsorted(table.limit, windows, side="right")
    long = length > bits
    code = (windows[long] >> (table.max_length - length[long]).astype(np.uint64)).astype(np.int64)
    found[long] = table.symbols[table.first_rank[length[long]] + code - table.first_code[length[long]]]
  return found


def _code_lengths_at(table: _Canonical, length_table: np.ndarray, bits: int, pairs: np.ndarray) -> np.ndarray:
  """uint8[32, words]: the length of the code starting at each bit offset of each word (`pairs`: word and next).

  The table's index is taken straight from the pair (a signed shift, then a
  mask: int64 indices, no copy); only codes longer than the table's bits,
  rare, get their L-bit window and a search.
  """
  shifts = 2 * _WORD - bits - np.arange(_WORD, dtype=np.int64)
  found = np.take(length_table, (pairs.view(np.int64)[None, :] >> shifts[:, None]) & ((1 << bits) - 1))
  if table.max_length > bits:
    offset, word = np.nonzero(found == 0)
    shift = (2 * _WORD - table.max_length - offset).astype(np.uint64)
    windows = (pairs[word] >> shift) & np.uint64((1 << table.max_length) - 1)
    found[offset, word] = np.searchsorted(table.limit, windows, side="right")
  return found


def _entries(maps: np.ndarray, entry: int) -> np.ndarray:
  """States s[0] = entry, s[i+1] = maps[s[i], i], for `maps` uint8[D, m] with values in 0..D-1.

  Huffman codes resynchronise: walks that enter a word at different offsets
  mostly leave it at the same one, so most maps are constant. Iterating all
  states at once from a guess (s[i+1] = maps[s[i], i] for every i) then
  reaches the fixed point in a few rounds, and a fixed point is the answer,
  since the recurrence determines it from s[0]. Codes that do not
  resynchronise (e.g. all of one length) fall back to the logarithmic scan.
  """
  m = maps.shape[1]
  columns = np.arange(m - 1)
  states = np.zeros(m, maps.dtype)
  states[0] = entry
  for _ in range(_ENTRY_ROUNDS):
    following = maps[states[:-1], columns]
    if np.array_equal(following, states[1:]):
      return states
    states[1:] = following
  scan = np.zeros((1 << (m - 1).bit_length(), maps.shape[0]), maps.dtype)
  scan[:m] = maps.T
  return _compose_scan(scan, entry)[:m].astype(maps.dtype)


def _compose_scan(maps: np.ndarray, entry: int) -> np.ndarray:
  """States s[0] = entry, s[i+1] = maps[i][s[i]] for i < m - 1, all at once (up- and down-sweep over a binary tree).

  `maps` is int[m, D] with values in 0..D-1, m a power of 2; returns int[m].
  """
  levels = [maps]
  while levels[-1].shape[0] > 1:
    below = levels[-1]
    levels.append(np.take_along_axis(below[1::2], below[0::2], axis=1))  # Right after left.
  states = np.array([entry])
  for below in reversed(levels[:-1]):
    left = below[0::2]
    after_left = np.take_along_axis(left, states[:, None], axis=1)[:, 0]
    states = np.stack([states, after_left], axis=1).ravel()
  return states


def _codewords_per_word(lengths: np.ndarray) -> int:
  """The most codewords that can start in one 32-bit word: ceil(32 / the shortest length)."""
  lengths = np.asarray(lengths)
  return -(-_WORD // int(np.min(lengths[lengths > 0])))


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
  """The `count` symbols that `encode(symbols, lengths)` packed into `data`.

  Where each codeword starts depends on every codeword before it, so instead
  of walking the stream, this works on all 32-bit words at once. It looks up
  the code length at every bit position (a 16-bit table), then, per word,
  where a walk from each offset leaves the word: offsets from 31 down to 0,
  each one row of gathers, since a walk from p continues from p + length > p.
  A walk enters a word at offset < L (a code started before it ends within
  L - 1 bits), so each word is a map on 0..L-1, and chaining these maps gives
  every word's entry (`_entries`). Each word is then walked from its entry,
  one codeword per step, all words at once. Work is ~10 vectorised operations
  per bit of `data`, on arrays of `_CHUNK_WORDS` that stay in cache.

  Returns:
    The symbols, as the narrowest unsigned dtype holding n - 1 (n = len(lengths)).
  """
  table = _canonical(lengths)
  if count < 0:
    raise ValueError(f"count={count} is not a number of symbols")
  dtype = table.symbols.dtype
  if count == 0 or table.symbols.size == 0:
    if count or data:
      raise ValueError(f"{len(data)} bytes cannot hold {count} symbols of a code with "
                       f"{table.symbols.size} symbols")
    return np.zeros(0, dtype)
  if table.symbols.size == 1:  # A lone symbol's 1-bit code: the bits carry nothing.
    if len(data) != -(-count // 8):
      raise ValueError(f"{count} 1-bit codes take {-(-count // 8)} bytes, not {len(data)}")
    return np.full(count, table.symbols[0], dtype)
  max_length = table.max_length
  length_table, symbol_table, table_bits = _lookup_tables(table)
  padded = np.frombuffer(data + bytes(-len(data) % 4 + 4), ">u4").astype(np.uint64)
  pairs = (padded[:-1] << np.uint64(_WORD)) | padded[1:]  # Word i and the one after: any code starting in i.
  per_word = _codewords_per_word(lengths)
  chunk_words = min(pairs.size, _CHUNK_WORDS)
  # hop[p, w]: the offset after the code at offset p of word w; rows 32..63 (a walk that left) map to themselves.
  # leave[p, w]: the offset in word w + 1 where a walk from offset p of word w enters it; rows 32..63: p - 32.
  hop = np.empty((2 * _WORD, chunk_words), np.uint8)
  leave = np.empty((2 * _WORD, chunk_words), np.uint8)
  hop[_WORD:] = np.arange(_WORD, 2 * _WORD, dtype=np.uint8)[:, None]
  leave[_WORD:] = np.arange(_WORD, dtype=np.uint8)[:, None]
  all_columns = np.arange(chunk_words, dtype=np.intp)
  out, found, entry = [], 0, 0
  for first in range(0, pairs.size, _CHUNK_WORDS):
    chunk = pairs[first:first + _CHUNK_WORDS]
    n_words = chunk.size
    if n_words < chunk_words:  # The last, shorter chunk: tables of its width.
      hop, leave = np.ascontiguousarray(hop[:, :n_words]), np.ascontiguousarray(leave[:, :n_words])
    columns = all_columns[:n_words]
    hop_rows, leave_rows = hop.reshape(-1), leave.reshape(-1)
    np.add(np.arange(_WORD, dtype=np.uint8)[:, None], _code_lengths_at(table, length_table, table_bits, chunk),
           out=hop[:_WORD])
    for p in range(_WORD - 1, -1, -1):
      leave[p] = np.take(leave_rows, hop[p] * np.intp(n_words) + columns)
    starts = _entries(leave[:max_length], entry)
    entry = int(leave[starts[-1], n_words - 1])
    # Every word walked at once from its entry, one codeword per step: offsets[rank, word].
    offsets = np.empty((per_word, n_words), np.uint8)
    offsets[0] = starts
    for j in range(1, per_word):
      offsets[j] = np.take(hop_rows, offsets[j - 1] * np.intp(n_words) + columns)  # >= 32: left the word.
    inside = offsets.T < _WORD  # Word-major: the stream's order.
    word, _ = np.nonzero(inside)
    take = min(word.size, count - found)
    word = word[:take]
    position = offsets.T[inside][:take].astype(np.int64)
    out.append(_symbols_at(table, symbol_table, table_bits, np.take(chunk, word), position))
    found += take
    if found == count:
      end_bit = (first + int(word[-1])) * _WORD + int(hop[position[-1], word[-1]])
      if -(-end_bit // 8) != len(data):
        raise ValueError(f"{count} symbols end at bit {end_bit}, but the stream has {len(data)} bytes")
      return np.concatenate(out).astype(dtype, copy=False)
  raise ValueError(f"the stream of {len(data)} bytes holds only {found} of {count} symbols")
