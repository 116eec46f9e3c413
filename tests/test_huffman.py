"""Canonical Huffman coding: optimal lengths against a heapq reference, prefix-free codes, exact round trips."""

import heapq
import itertools
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dc_jax import huffman

FIBONACCI = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946,
                      17711, 28657, 46368, 75025, 121393, 196418, 317811])  # Huffman depth 27: the limit binds.


def reference_bits(frequencies) -> int:
  """Total bits of an optimal prefix code, by the textbook heap: each merge costs its weight (1 bit each if alone)."""
  heap = [int(f) for f in frequencies if f > 0]
  if len(heap) == 1:
    return heap[0]
  heapq.heapify(heap)
  total = 0
  while len(heap) > 1:
    merged = heapq.heappop(heap) + heapq.heappop(heap)
    total += merged
    heapq.heappush(heap, merged)
  return total


def assert_prefix_free(lengths: np.ndarray) -> None:
  """No code is a prefix of another: in left-aligned order, a prefix would sit right before its extension."""
  codes = huffman.codes(lengths)
  present = np.flatnonzero(lengths)
  longest = int(lengths.max())
  aligned = [(int(codes[s]) << (longest - int(lengths[s])), int(lengths[s])) for s in present]
  aligned.sort()
  for (a, la), (b, lb) in zip(aligned, aligned[1:]):
    assert b >> (longest - la) != a >> (longest - la), f"code of {la} bits is a prefix of one of {lb} bits"


def skewed_stream(seed: int, n_symbols: int, size: int) -> np.ndarray:
  """Symbols drawn from a peaked distribution, like cluster indices of a trained layer."""
  rng = np.random.default_rng(seed)
  p = np.exp(-0.5 * ((np.arange(n_symbols) - n_symbols / 2) / max(n_symbols / 8, 0.5)) ** 2)
  return rng.choice(n_symbols, size, p=p / p.sum())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=300))
def test_total_bits_equal_heapq_reference(frequencies):
  lengths = huffman.code_lengths(np.array(frequencies))
  assert huffman.coded_bits(frequencies, lengths) == reference_bits(frequencies)
  assert np.all((lengths > 0) == (np.array(frequencies) > 0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 1 << 20), min_size=2, max_size=300))
def test_codes_are_prefix_free_and_complete(frequencies):
  lengths = huffman.code_lengths(np.array(frequencies))
  assert_prefix_free(lengths)
  assert sum(2.0 ** -int(n) for n in lengths) == 1.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_symbols=st.integers(1, 300), size=st.integers(0, 3000),
       chunk_words=st.sampled_from([1, 2, 4, 32768]), chunk_symbols=st.sampled_from([1, 7, 1 << 20]))
def test_decode_inverts_encode_across_chunk_seams(seed, n_symbols, size, chunk_words, chunk_symbols):
  symbols = skewed_stream(seed, n_symbols, size)
  lengths = huffman.code_lengths(np.bincount(symbols, minlength=n_symbols))
  with mock.patch.object(huffman, "_CHUNK_WORDS", chunk_words), \
       mock.patch.object(huffman, "_CHUNK_SYMBOLS", chunk_symbols):
    data = huffman.encode(symbols, lengths)
    decoded = huffman.decode(data, lengths, size)
  np.testing.assert_array_equal(decoded, symbols)
  assert len(data) == -(-huffman.coded_bits(np.bincount(symbols, minlength=n_symbols), lengths) // 8)


def test_round_trip_of_a_stream_spanning_several_chunks():
  symbols = skewed_stream(0, 33, 600_000)  # ~2.4 Mbit: three decoding chunks.
  lengths = huffman.code_lengths(np.bincount(symbols))
  np.testing.assert_array_equal(huffman.decode(huffman.encode(symbols, lengths), lengths, symbols.size), symbols)


@pytest.mark.parametrize("shortest", [1, 2, 3, 4, 5, 8, 9, 16, 17])
def test_decode_walks_as_many_codewords_per_word_as_the_shortest_code_allows(shortest):
  """Words packed as full as the shortest code allows: 32, 16, 11, 8, 7, 4, 4, 2, 2 codewords start in one."""
  lengths = np.array([shortest] * (2 ** shortest - 1) + [shortest + 1] * 2)  # A complete code.
  symbols = np.random.default_rng(shortest).integers(0, lengths.size, 5000)
  symbols[:1000] = 0  # 1000 shortest codes in a row: every word holds as many codewords as it can.
  data = huffman.encode(symbols, lengths)
  steps = huffman._codewords_per_word(lengths)
  assert steps == {1: 32, 2: 16, 3: 11, 4: 8, 5: 7, 8: 4, 9: 4, 16: 2, 17: 2}[shortest]
  np.testing.assert_array_equal(huffman.decode(data, lengths, symbols.size), symbols)
  # And no fewer will do: walking one codeword less per word, decoding these full words fails or misreads.
  with mock.patch.object(huffman, "_codewords_per_word", lambda _: steps - 1):
    try:
      fewer = huffman.decode(data, lengths, symbols.size)
    except (ValueError, IndexError):
      fewer = None
  assert fewer is None or not np.array_equal(fewer, symbols)


def test_one_symbol_stream_takes_one_bit_per_symbol():
  lengths = huffman.code_lengths(np.array([0, 0, 5, 0]))
  np.testing.assert_array_equal(lengths, [0, 0, 1, 0])
  data = huffman.encode(np.full(11, 2), lengths)
  assert data == bytes(2)
  np.testing.assert_array_equal(huffman.decode(data, lengths, 11), np.full(11, 2))


def test_empty_stream_is_empty_bytes():
  lengths = huffman.code_lengths(np.zeros(4, np.int64))
  assert huffman.encode(np.zeros(0, np.int64), lengths) == b""
  assert huffman.decode(b"", lengths, 0).size == 0
  assert huffman.code_lengths(np.zeros(0, np.int64)).size == 0


def test_alphabet_of_65536_symbols_is_optimal_and_round_trips():
  rng = np.random.default_rng(1)
  frequencies = rng.integers(1, 50, 1 << 16)
  lengths = huffman.code_lengths(frequencies)
  assert huffman.coded_bits(frequencies, lengths) == reference_bits(frequencies)
  symbols = rng.permutation(np.repeat(np.arange(1 << 16), frequencies))
  decoded = huffman.decode(huffman.encode(symbols, lengths), lengths, symbols.size)
  assert decoded.dtype == np.uint16
  np.testing.assert_array_equal(decoded, symbols)


def test_length_limit_binds_only_when_needed():
  unlimited = huffman.code_lengths(FIBONACCI, max_length=32)
  limited = huffman.code_lengths(FIBONACCI)
  assert unlimited.max() == 27 and limited.max() == huffman.MAX_LENGTH
  assert huffman.coded_bits(FIBONACCI, unlimited) == reference_bits(FIBONACCI)
  assert huffman.coded_bits(FIBONACCI, limited) > reference_bits(FIBONACCI)
  assert_prefix_free(limited)
  symbols = np.random.default_rng(2).permutation(np.repeat(np.arange(FIBONACCI.size), FIBONACCI))
  for lengths in (limited, unlimited):
    np.testing.assert_array_equal(huffman.decode(huffman.encode(symbols, lengths), lengths, symbols.size), symbols)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=8), st.integers(0, 2))
def test_length_limited_code_is_optimal_among_codes_within_the_limit(frequencies, slack):
  """Against brute force: every sorted length assignment within the limit that satisfies Kraft."""
  limit = (len(frequencies) - 1).bit_length() + slack
  lengths = huffman.code_lengths(np.array(frequencies), max_length=limit)
  assert lengths.max() <= limit
  descending = sorted(frequencies, reverse=True)
  best = min(sum(f * n for f, n in zip(descending, candidate))
             for candidate in itertools.combinations_with_replacement(range(1, limit + 1), len(frequencies))
             if sum(2.0 ** -n for n in candidate) <= 1.0)
  assert huffman.coded_bits(frequencies, lengths) == best


def test_entropy_bounds_huffman_bits():
  counts = np.bincount(skewed_stream(3, 32, 50_000))
  bits_per_symbol = huffman.coded_bits(counts, huffman.code_lengths(counts)) / counts.sum()
  assert huffman.entropy(counts) <= bits_per_symbol < huffman.entropy(counts) + 1
  assert huffman.entropy([5, 5, 5, 5]) == 2.0
  assert huffman.entropy([7]) == 0.0


def test_encoding_a_symbol_without_a_code_fails():
  lengths = huffman.code_lengths(np.array([3, 0, 4]))
  with pytest.raises(ValueError, match="symbol 1 has no code"):
    huffman.encode(np.array([0, 1, 2]), lengths)


def test_decoding_the_wrong_count_fails():
  symbols = skewed_stream(4, 8, 1000)
  lengths = huffman.code_lengths(np.bincount(symbols))
  data = huffman.encode(symbols, lengths)
  with pytest.raises(ValueError, match="holds only|end at bit"):
    huffman.decode(data, lengths, 2000)
  with pytest.raises(ValueError, match="end at bit"):
    huffman.decode(data, lengths, 500)


def test_lengths_that_are_not_a_complete_code_are_rejected():
  with pytest.raises(ValueError, match="complete prefix code"):
    huffman.decode(b"\x00", np.array([1, 2]), 1)


def packed_one_by_one(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
  """The reference packing: each symbol's code appended as a string of bits, then cut into bytes."""
  codes = huffman.codes(lengths)
  bits = "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)
  bits += "0" * (-len(bits) % 8)
  return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("size", [1, 2, 999, 1000])
def test_encoding_symbols_in_pairs_gives_the_bits_of_one_at_a_time(size):
  symbols = skewed_stream(size, 40, size)
  lengths = huffman.code_lengths(np.bincount(symbols, minlength=40))
  assert 2 * lengths.max() <= 32  # So that encode packs pairs (odd sizes: the last symbol alone).
  assert huffman.encode(symbols, lengths) == packed_one_by_one(symbols, lengths)


@pytest.mark.parametrize("n_symbols, scans", [(32, True), (33, False)])
def test_codes_that_never_resynchronise_fall_back_to_the_exact_scan(n_symbols, scans):
  """32 symbols of 5 bits each: a walk entering a word at another offset stays out of step forever."""
  symbols = skewed_stream(1, n_symbols, 100_000) if not scans else np.random.default_rng(1).integers(0, 32, 100_000)
  lengths = huffman.code_lengths(np.bincount(symbols, minlength=n_symbols))
  data = huffman.encode(symbols, lengths)
  with mock.patch.object(huffman, "_compose_scan", wraps=huffman._compose_scan) as scan:
    np.testing.assert_array_equal(huffman.decode(data, lengths, symbols.size), symbols)
  assert scan.called == scans
