"""Canonical Huffman codes (Deep Compression Sec. 4): optimal code lengths, then encoding and decoding, vectorised.

Only the code lengths are stored: the codes follow from them canonically, as
in DEFLATE (RFC 1951, 3.2.2): ordered by (length, symbol), each code is the
previous one plus 1, shifted left when the length grows. Bits are packed most
significant first. Lengths are optimal (minimum total bits) among codes no
longer than `max_length` bits; when no code needs more, that is plain Huffman.

Nothing loops in Python over symbols or bits: encoding scatters each code into
32-bit words with `reduceat`; decoding finds where every codeword starts by
pointer doubling over all bit positions (see `decode`). Python loops run over
code lengths, doubling rounds, tree levels and chunks of the stream only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_LENGTH = 24  # Default length limit: codes span at most 2 of the 32-bit words `encode` packs.
_WORD = 32  # Bits per word; decoding follows codewords one word at a time.
_LOG2_WORD = 5  # Bits of a bit offset within a word.
_CHUNK_SYMBOLS = 1 << 20  # Encoding works on this many symbols at a time to bound memory.
_CHUNK_WORDS = 1 << 15  # Decoding works on this many words (1 Mbit) at a time; a power of 2.
_TABLE_BITS = 16  # Decoding looks up code lengths in a table indexed by this many leading bits.


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


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
  """The symbols' canonical codes, packed most significant bit first; the last byte is padded with 0 bits.

  Each code is shifted into place inside a 64-bit window over the two 32-bit
  words it touches; codes never overlap, so OR-reducing them per word packs them.
  """
  table = _canonical(lengths)
  lengths = np.asarray(lengths, np.int64)
  symbols = np.asarray(symbols).ravel()
  if symbols.size == 0:
    return b""
  if not np.issubdtype(symbols.dtype, np.integer):
    raise ValueError(f"symbols must be integers; got {symbols.dtype}")
  coded = (symbols >= 0) & (symbols < lengths.size)
  coded[coded] = lengths[symbols[coded]] > 0
  if not coded.all():
    raise ValueError(f"symbol {int(symbols[~coded][0])} has no code; coded symbols are "
                     f"{np.flatnonzero(lengths).tolist()}")
  total_bits = int(np.bincount(symbols, minlength=lengths.size) @ lengths)
  words = np.zeros(total_bits // _WORD + 2, np.uint64)
  offset = 0
  for start in range(0, symbols.size, _CHUNK_SYMBOLS):
    chunk = symbols[start:start + _CHUNK_SYMBOLS]
    length = np.take(lengths, chunk)
    ends = offset + np.cumsum(length)
    begins = ends - length
    offset = int(ends[-1])
    word = begins >> _LOG2_WORD
    shift = (2 * _WORD - length - (begins & (_WORD - 1))).astype(np.uint64)
    window = np.take(table.codes, chunk) << shift  # The code inside bits 63..0 of words (word, word + 1).
    firsts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
    touched = word[firsts]
    words[touched] |= np.bitwise_or.reduceat(window >> np.uint64(_WORD), firsts)
    words[touched + 1] |= np.bitwise_or.reduceat(window & np.uint64(0xFFFFFFFF), firsts)
  return words.astype(">u4").tobytes()[:-(-total_bits // 8)]


def _length_table(table: _Canonical) -> tuple[np.ndarray, int]:
  """Code length by the next `bits` bits of the stream; 0 where those bits start a longer code."""
  bits = min(table.max_length, _TABLE_BITS)
  prefixes = np.arange(1 << bits, dtype=np.uint64) << np.uint64(table.max_length - bits)
  lengths = np.searchsorted(table.limit, prefixes, side="right").astype(np.uint8)
  lengths[lengths > bits] = 0
  return lengths, bits


def _code_length_at(table: _Canonical, length_table: np.ndarray, bits: int, windows: np.ndarray) -> np.ndarray:
  """The length of the code at the start of each L-bit window (L = the longest code)."""
  found = length_table[(windows >> np.uint64(table.max_length - bits)).astype(np.intp)]
  long = found == 0
  if long.any():
    found[long] = np.searchsorted(table.limit, windows[long], side="right")
  return found


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


def _doubling_rounds(lengths: np.ndarray) -> int:
  """R such that 2**R hops leave any word: at most ceil(32 / shortest length) codewords start in one."""
  lengths = np.asarray(lengths)
  shortest = int(np.min(lengths[lengths > 0]))
  return max(1, (-(-_WORD // shortest) - 1).bit_length())


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
  """The `count` symbols that `encode(symbols, lengths)` packed into `data`.

  Where each codeword starts depends on every codeword before it, so instead
  of walking the stream, this computes the code length at every bit position
  and, per 32-bit word, where a walk entering at offset s would leave it
  (pointer doubling: 5 rounds, fewer when the shortest code is longer than 1
  bit). A walk enters a word at offset < L (a code started before it ends
  within L - 1 bits), so each word is a map on 0..L-1;
  an associative scan of these maps gives every word's true entry, and the
  doubling tables then give each codeword's start by the binary digits of its
  rank in the word. Work is ~30 vectorised operations per bit of `data`.

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
  length_table, table_bits = _length_table(table)
  padded = np.frombuffer(data + bytes(-len(data) % 4 + 4), ">u4").astype(np.uint64)
  pairs = (padded[:-1] << np.uint64(_WORD)) | padded[1:]  # Word i and the one after: any code starting in i.
  offsets = np.arange(_WORD, dtype=np.uint64)
  mask = np.uint64((1 << max_length) - 1)
  # jumps[k, w, s]: offset in word w after 2**k codewords from offset s, or the first offset >= 32 once
  # the walk leaves the word; columns 32..63 map to themselves so that a walk that left stays put.
  rounds = _doubling_rounds(lengths)
  all_jumps = np.empty((rounds + 1, min(pairs.size, _CHUNK_WORDS), 2 * _WORD), np.uint8)
  all_jumps[:, :, _WORD:] = np.arange(_WORD, 2 * _WORD, dtype=np.uint8)
  all_rows = np.arange(all_jumps.shape[1], dtype=np.intp) * (2 * _WORD)
  out, found, entry = [], 0, 0
  for first in range(0, pairs.size, _CHUNK_WORDS):
    chunk = pairs[first:first + _CHUNK_WORDS]
    n_words = chunk.size
    jumps, rows = all_jumps[:, :n_words], all_rows[:n_words]
    windows = (chunk[:, None] >> (np.uint64(2 * _WORD - max_length) - offsets)) & mask
    hop = jumps[0, :, :_WORD]
    hop[:] = np.arange(_WORD, dtype=np.uint8) + _code_length_at(table, length_table, table_bits, windows)
    for k in range(rounds):
      jumps[k + 1, :, :_WORD] = np.take(jumps[k], rows[:, None] + jumps[k, :, :_WORD])
    # Where a walk entering at offset s < L enters the next word; padded to a power of 2 words for the scan.
    leave = jumps[rounds, :, :max_length] - np.uint8(_WORD)
    maps = np.zeros((1 << (n_words - 1).bit_length(), max_length), np.uint8)
    maps[:n_words] = leave
    starts = _compose_scan(maps, entry)[:n_words]
    entry = int(leave[-1, starts[-1]])
    # Codewords per word: the walk from its entry, by binary lifting over the doubling tables.
    position, in_word = starts.astype(np.intp), np.ones(n_words, np.intp)
    for k in reversed(range(rounds)):
      step = np.take(jumps[k], rows + position)
      inside = step < _WORD
      position = np.where(inside, step, position)
      in_word += inside.astype(np.intp) << k
    # Each codeword's offset in its word: 2**k hops from the entry for each binary digit k of its rank.
    take = min(int(in_word.sum()), count - found)
    word = np.repeat(np.arange(n_words), in_word)[:take]
    rank = np.arange(take) - np.repeat(np.cumsum(in_word) - in_word, in_word)[:take]
    base = word * (2 * _WORD)
    position = starts[word].astype(np.intp)
    for k in range(rounds):
      position = np.where((rank >> k) & 1, np.take(jumps[k], base + position), position)
    at = word * _WORD + position
    length = np.take(jumps[0], base + position).astype(np.int64) - position
    code = (np.take(windows, at) >> (max_length - length).astype(np.uint64)).astype(np.int64)
    out.append(table.symbols[table.first_rank[length] + code - table.first_code[length]])
    found += take
    if found == count:
      end_bit = first * _WORD + int(at[-1]) + int(length[-1])
      if -(-end_bit // 8) != len(data):
        raise ValueError(f"{count} symbols end at bit {end_bit}, but the stream has {len(data)} bytes")
      return np.concatenate(out).astype(dtype, copy=False)
  raise ValueError(f"the stream of {len(data)} bytes holds only {found} of {count} symbols")
