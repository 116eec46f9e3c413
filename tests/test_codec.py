"""The compressed model file: relative indices with fillers, exact round trips, statistics, corruption, atomicity."""

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dc_jax import codec, huffman, share
from dc_jax.errors import ConfigError, DataError
from dc_jax.share import SharedKernel


def shared_kernel(seed: int, shape: tuple[int, ...], k: int, kept_fraction: float) -> SharedKernel:
  """A random SharedKernel: peaked cluster choice, `kept_fraction` of the weights kept at random."""
  rng = np.random.default_rng(seed)
  mask = rng.random(shape) < kept_fraction
  p = np.exp(-0.5 * ((np.arange(k) - k / 2) / max(k / 6, 0.5)) ** 2)
  indices = np.where(mask, rng.choice(k, shape, p=p / p.sum()), 0).astype(np.uint8 if k <= 256 else np.uint16)
  return SharedKernel(codebook=np.sort(rng.standard_normal(k)).astype(np.float32), indices=indices, mask=mask)


def assert_same_leaves(a, b) -> None:
  """Same structure, and every array equal bit for bit with the same dtype and shape."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def mixed_tree(seed: int = 0) -> dict:
  """VGG-like variables: shared kernels, raw float32 biases, BatchNorm statistics, a jax leaf, an empty dict."""
  rng = np.random.default_rng(seed)
  return {
      "params": {
          "conv1": {"kernel": shared_kernel(seed, (3, 3, 3, 16), 256, 0.6),
                    "bias": rng.standard_normal(16).astype(np.float32)},
          "bn1": {"scale": jnp.ones(16), "bias": np.zeros(16, np.float32)},
          "fc1": {"kernel": shared_kernel(seed + 1, (400, 120), 32, 0.04),
                  "bias": rng.standard_normal(120).astype(np.float32)},
          "head": {"kernel": shared_kernel(seed + 2, (120, 10), 1000, 0.3)},
      },
      "batch_stats": {"bn1": {"mean": rng.standard_normal(16).astype(np.float32),
                              "var": rng.random(16).astype(np.float32)}},
      "counters": {"step": np.array(7, np.int64), "flags": np.array([True, False])},
      "unused": {},
  }


@pytest.fixture
def model_file(tmp_path):
  path = tmp_path / "model.dcz"
  codec.write(path, mixed_tree())
  return path


def test_relative_entries_insert_fillers_as_in_figure_2():
  mask = np.zeros(20, bool)
  mask[[1, 4, 15]] = True
  indices = np.zeros(20, np.uint8)
  indices[[1, 4, 15]] = [3, 0, 7]
  symbols, fields = codec.relative_entries(mask, indices, index_bits=3)
  # Jumps 2, 3, then 11 = a filler of 8 + 3.
  np.testing.assert_array_equal(symbols, [4, 1, 0, 8])
  np.testing.assert_array_equal(fields, [1, 2, 7, 2])
  np.testing.assert_array_equal(codec.absolute_positions(symbols, fields, 20), [1, 4, 15])


def test_a_gap_far_longer_than_2_to_the_b_takes_one_filler_per_2_to_the_b():
  mask = np.zeros(10_000, bool)
  mask[9_999] = True
  symbols, fields = codec.relative_entries(mask, np.zeros(10_000, np.uint8), index_bits=2)
  assert symbols.size == 9_999 // 4 + 1 and np.all(symbols[:-1] == 0) and symbols[-1] == 1


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
       kept_fraction=st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 1.0]),
       k=st.integers(2, 256), index_bits=st.sampled_from([1, 2, 3, 4, 5, 8, 16, "auto"]))
def test_decode_layer_inverts_encode_layer(seed, shape, kept_fraction, k, index_bits):
  kernel = shared_kernel(seed, shape, k, kept_fraction)
  encoded, stats = codec.encode_layer(kernel, index_bits)
  assert_same_leaves(codec.decode_layer(encoded), kernel)
  assert stats["kept"] == int(np.sum(kernel.mask)) and stats["entries"] == encoded.entries


@pytest.mark.parametrize("kept", [[], [0], [2_500], [4_999]], ids=["all-pruned", "first", "middle", "last"])
def test_all_pruned_and_single_weight_layers_round_trip(kept):
  mask = np.zeros((50, 100), bool)
  mask.ravel()[kept] = True
  indices = np.where(mask, 31, 0).astype(np.uint8)
  kernel = SharedKernel(codebook=np.linspace(-1, 1, 32, dtype=np.float32), indices=indices, mask=mask)
  for bits in (1, 5, 8):
    assert_same_leaves(codec.decode_layer(codec.encode_layer(kernel, bits)[0]), kernel)


def test_more_than_256_clusters_round_trip_as_uint16():
  kernel = shared_kernel(0, (64, 64), 4000, 0.3)
  decoded = codec.decode_layer(codec.encode_layer(kernel, 4)[0])
  assert decoded.indices.dtype == np.uint16
  assert_same_leaves(decoded, kernel)


def test_auto_picks_the_width_with_the_fewest_coded_bytes():
  kernel = shared_kernel(1, (300, 200), 32, 0.05)

  def coded_bytes(bits):
    encoded, _ = codec.encode_layer(kernel, bits)
    return (len(encoded.weight_payload) + len(encoded.index_payload) + encoded.weight_lengths.size
            + encoded.index_lengths.size)

  auto, _ = codec.encode_layer(kernel, "auto")
  assert coded_bytes("auto") == min(coded_bytes(bits) for bits in codec.AUTO_INDEX_BITS)
  assert auto.index_bits in codec.AUTO_INDEX_BITS


def test_layer_statistics_follow_the_paper_columns():
  kernel = shared_kernel(2, (500, 300), 32, 0.08)
  encoded, row = codec.encode_layer(kernel, 5)
  entries, k = encoded.entries, 32
  assert row["weight_bits_pq"] == 6  # 32 clusters + the filler symbol.
  assert row["index_bits_pq"] == 5
  assert row["compress_rate_pq"] == pytest.approx(32 * 150_000 / (entries * (6 + 5) + 32 * k))
  huffman_bits = 8 * (len(encoded.weight_payload) + len(encoded.index_payload))
  assert row["weight_bits_pqh"] * entries + row["index_bits_pqh"] * entries == pytest.approx(huffman_bits, abs=16)
  assert row["weight_entropy"] <= row["weight_bits_pqh"] < row["weight_entropy"] + 1
  assert row["index_entropy"] <= row["index_bits_pqh"] < row["index_entropy"] + 1
  assert row["compress_rate_pqh"] > row["compress_rate_pq"]


def test_file_round_trip_restores_the_exact_tree(tmp_path):
  tree = mixed_tree()
  path = tmp_path / "model.dcz"
  summary = codec.write(path, tree, index_bits=[(r".*conv.*", 8), (r".*", "auto")])
  back = codec.read(path)
  assert_same_leaves(back, tree)
  assert list(back) == list(tree) and list(back["params"]) == list(tree["params"])
  assert back["unused"] == {}
  assert isinstance(back["params"]["fc1"]["kernel"], SharedKernel)
  assert isinstance(back["params"]["bn1"]["scale"], np.ndarray)
  assert [row["layer"] for row in summary.layers] == ["params/conv1/kernel", "params/fc1/kernel",
                                                      "params/head/kernel"]
  assert summary.layers[0]["index_bits_pq"] == 8


def test_summary_totals_are_json_and_match_the_file(model_file, tmp_path):
  summary = codec.write(tmp_path / "again.dcz", mixed_tree())
  json.loads(json.dumps(summary._asdict()))
  totals = summary.totals
  assert totals["file_bytes"] == os.path.getsize(tmp_path / "again.dcz") == os.path.getsize(model_file)
  assert totals["compression_ratio"] == pytest.approx(totals["dense_bytes"] / totals["file_bytes"])


def test_dense_bytes_count_kernels_as_float32_and_raw_leaves_as_stored(tmp_path):
  kernel = shared_kernel(0, (100, 10), 16, 0.1)
  tree = {"w": kernel, "b": np.zeros(10, np.float32), "n": np.zeros(3, np.int64)}
  totals = codec.write(tmp_path / "m.dcz", tree).totals
  assert totals["dense_bytes"] == 4 * 1000 + 4 * 10 + 8 * 3
  assert totals["raw_bytes"] == 4 * 10 + 8 * 3


def test_flipped_payload_byte_names_the_record(model_file):
  data = bytearray(model_file.read_bytes())
  data[-40] ^= 0xFF  # Inside the last record: "unused" is last, so this is in counters/flags or before.
  model_file.write_bytes(bytes(data))
  with pytest.raises(DataError, match=r"record \d+ \('.*'\) is corrupt: CRC32") as error:
    codec.read(model_file)
  assert str(model_file) in str(error.value)


def test_flipped_byte_in_a_shared_kernel_names_its_path(tmp_path):
  path = tmp_path / "m.dcz"
  codec.write(path, {"fc": {"kernel": shared_kernel(0, (200, 100), 32, 0.1)}})
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match=r"record 0 \('fc/kernel'\) is corrupt"):
    codec.read(path)


def test_truncated_file_fails(model_file):
  data = model_file.read_bytes()
  for size in (5, 30, len(data) - 1):
    model_file.write_bytes(data[:size])
    with pytest.raises(DataError, match="truncated"):
      codec.read(model_file)


def test_bad_magic_fails(model_file):
  model_file.write_bytes(b"PK\x03\x04" + model_file.read_bytes()[4:])
  with pytest.raises(DataError, match="not a dc_jax compressed model"):
    codec.read(model_file)


def test_unknown_version_fails(model_file):
  data = bytearray(model_file.read_bytes())
  data[8:10] = struct.pack("<H", 99)
  data[14:18] = struct.pack("<I", zlib.crc32(bytes(data[:14])))
  model_file.write_bytes(bytes(data))
  with pytest.raises(DataError, match="format version 99"):
    codec.read(model_file)


def test_trailing_bytes_fail(model_file):
  model_file.write_bytes(model_file.read_bytes() + b"\x00")
  with pytest.raises(DataError, match="1 trailing bytes"):
    codec.read(model_file)


@pytest.mark.parametrize("leaf", ["a string", [1.0, 2.0], np.array(["a"]), np.array([None])])
def test_failed_write_leaves_no_file_and_keeps_the_old_one(model_file, leaf):
  good = model_file.read_bytes()
  before = sorted(os.listdir(model_file.parent))
  with pytest.raises(TypeError, match="params/odd"):
    codec.write(model_file, {"params": {"odd": leaf}})
  with pytest.raises(TypeError):
    codec.write(model_file.parent / "new.dcz", {"params": {"odd": leaf}})
  assert sorted(os.listdir(model_file.parent)) == before
  assert model_file.read_bytes() == good


def test_an_error_while_writing_removes_the_temporary_file(model_file, monkeypatch):
  good = model_file.read_bytes()

  def failing_fsync(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", failing_fsync)
  with pytest.raises(OSError, match="disk full"):
    codec.write(model_file, mixed_tree(1))
  assert os.listdir(model_file.parent) == [model_file.name]
  assert model_file.read_bytes() == good


@pytest.mark.parametrize("index_bits", [-1, 17, 5.0, True, "five", [("fc.*", 33)], [(".*",)]])
def test_bad_index_bits_fail_naming_the_value(tmp_path, index_bits):
  with pytest.raises(ConfigError, match="index_bits"):
    codec.write(tmp_path / "m.dcz", mixed_tree(), index_bits)
  assert not os.listdir(tmp_path)


def test_index_bit_rules_must_cover_every_shared_layer(tmp_path):
  with pytest.raises(ConfigError, match="no pattern matching 'params/fc1/kernel'"):
    codec.write(tmp_path / "m.dcz", mixed_tree(), [(r".*conv.*", 4), (r".*head.*", 4)])


def test_nonzero_index_at_a_pruned_position_is_rejected():
  kernel = shared_kernel(0, (10, 10), 4, 0.5)
  indices = np.asarray(kernel.indices).copy()
  indices[~np.asarray(kernel.mask)] = 1
  with pytest.raises(ValueError, match="0 at pruned positions"):
    codec.encode_layer(kernel.replace(indices=indices), 5, name="fc/kernel")


def test_jax_arrays_come_back_as_numpy_with_the_same_values(tmp_path):
  kernel = shared_kernel(3, (30, 20), 8, 0.2)
  tree = {"k": SharedKernel(jnp.asarray(kernel.codebook), jnp.asarray(kernel.indices), jnp.asarray(kernel.mask)),
          "b": jnp.arange(5, dtype=jnp.float32)}
  codec.write(tmp_path / "m.dcz", tree)
  back = codec.read(tmp_path / "m.dcz")
  assert_same_leaves(back, tree)
  chex.assert_trees_all_equal(back["k"].materialize(), tree["k"].materialize())
  assert isinstance(back["b"], np.ndarray)


def test_compression_of_a_lenet_like_tree_is_what_huffman_coding_both_streams_gives(tmp_path):
  """~8% kept, 32 clusters, 5-bit indices: 36.8x, past the 33.1x of the same streams at fixed width (P+Q)."""
  tree = {"ip1": {"kernel": shared_kernel(0, (784, 300), 32, 0.08), "bias": np.zeros(300, np.float32)},
          "ip2": {"kernel": shared_kernel(1, (300, 100), 32, 0.09), "bias": np.zeros(100, np.float32)}}
  totals = codec.write(tmp_path / "m.dcz", tree, 5).totals
  assert totals["file_bytes"] == (tmp_path / "m.dcz").stat().st_size
  assert totals["compression_ratio"] == pytest.approx(totals["dense_bytes"] / totals["file_bytes"])
  # Seeded weights, so the ratio is known: 1,062,400 bytes dense, 28,870 in the file (36.8x).
  assert totals["compression_ratio"] == pytest.approx(36.8, abs=0.5)
  assert totals["compress_rate_pq"] == pytest.approx(33.06, abs=0.1)  # 5-bit fields + 5-bit cluster codes.
  assert totals["compress_rate_pqh"] > totals["compress_rate_pq"] + 5  # What Huffman coding adds.


def test_positions_count_in_neuron_major_order_as_caffe_and_pytorch_lay_kernels_out():
  mask = np.zeros((3, 2), bool)  # Flax's (in, out): the only kept weight is input 0 of neuron 1.
  mask[0, 1] = True
  kernel = SharedKernel(codebook=np.float32([0.5, 1.0]), indices=mask.astype(np.uint8), mask=mask)
  encoded, _ = codec.encode_layer(kernel, index_bits=5)
  fields = huffman.decode(encoded.index_payload, encoded.index_lengths, encoded.entries)
  assert fields.tolist() == [3]  # Position 3 of (out, in) = [[0, 0, 0], [1, 0, 0]]: a jump of 4 from -1.
  assert_same_leaves(codec.decode_layer(encoded), kernel)


def test_float16_raw_leaves_make_a_smaller_file_that_reads_back_exactly(tmp_path):
  variables = mixed_tree()
  variables["batch_stats"]["bn1"]["var"] = np.array([1e5, *np.ones(15)], np.float32)  # Overflows float16.
  narrowed = codec.narrow_raw_floats(variables, "float16")
  assert list(narrowed["params"]) == list(variables["params"])  # Records keep the tree's order.
  full = codec.write(tmp_path / "f32.dcz", variables, "auto")
  half = codec.write(tmp_path / "f16.dcz", narrowed, "auto")
  assert_same_leaves(codec.read(tmp_path / "f16.dcz"), narrowed)
  bias = codec.read(tmp_path / "f16.dcz")["params"]["fc1"]["bias"]
  assert bias.dtype == np.float16
  np.testing.assert_allclose(bias, variables["params"]["fc1"]["bias"], rtol=2**-11)
  assert narrowed["batch_stats"]["bn1"]["var"].dtype == np.float32  # Kept whole: 1e5 is no float16.
  assert narrowed["counters"]["step"].dtype == np.int64
  raw_floats = 16 + 16 + 16 + 120 + 16  # conv1 bias, bn1 scale and bias, fc1 bias, the mean.
  assert full.totals["file_bytes"] - half.totals["file_bytes"] == 2 * raw_floats
  assert half.totals["dense_bytes"] == full.totals["dense_bytes"]  # Dense size counts float32 either way.
  with pytest.raises(ConfigError, match="codec.raw_dtype='int8'"):
    codec.narrow_raw_floats(variables, "int8")


def test_float16_codebooks_make_a_smaller_version_2_file_that_reads_back_exactly(tmp_path):
  variables = mixed_tree()
  narrowed = codec.narrow_codebooks(variables, "float16")
  full = codec.write(tmp_path / "f32.dcz", variables, "auto")
  half = codec.write(tmp_path / "f16.dcz", narrowed, "auto")
  back = codec.read(tmp_path / "f16.dcz")
  assert_same_leaves(back, narrowed)
  assert struct.unpack_from("<H", (tmp_path / "f16.dcz").read_bytes(), 8)[0] == 2
  kernel, original = back["params"]["fc1"]["kernel"], variables["params"]["fc1"]["kernel"]
  assert kernel.codebook.dtype == np.float16
  np.testing.assert_allclose(kernel.codebook, original.codebook, rtol=2**-11)
  np.testing.assert_array_equal(kernel.indices, original.indices)
  assert back["params"]["fc1"]["bias"].dtype == np.float32  # Raw leaves are codec.raw_dtype's.
  centroids = 256 + 32 + 1000
  # 2 bytes a centroid, less what version 2 adds (a type byte per key, a codebook dtype per kernel).
  assert 2 * centroids - 64 <= full.totals["file_bytes"] - half.totals["file_bytes"] < 2 * centroids
  with pytest.raises(ConfigError, match="codec.codebook_dtype='int8'"):
    codec.narrow_codebooks(variables, "int8")


def test_index_bits_0_means_auto_as_in_the_config():
  tree = mixed_tree()
  assert codec.encode(tree, 0)[0] == codec.encode(tree, "auto")[0]
  assert codec.encode(tree, [(".*", 0)])[0] == codec.encode(tree, "auto")[0]


def test_a_plain_tree_is_written_as_version_1_and_reads_back():
  content, _ = codec.encode(mixed_tree())
  assert struct.unpack_from("<H", content, 8)[0] == 1


def test_integer_keys_and_bfloat16_write_version_2_and_come_back_exactly(tmp_path):
  kernel = shared_kernel(0, (20, 6), 8, 0.3)
  bf16_kernel = kernel.replace(codebook=jnp.asarray(kernel.codebook, jnp.bfloat16))
  tree = {"layers": {0: {"kernel": kernel, "bias": np.arange(6, dtype=np.float32)},
                     1: {"kernel": bf16_kernel, "bias": np.linspace(-1, 1, 6).astype(jnp.bfloat16)}}}
  codec.write(tmp_path / "m.dcz", tree)
  back = codec.read(tmp_path / "m.dcz")
  assert struct.unpack_from("<H", (tmp_path / "m.dcz").read_bytes(), 8)[0] == 2
  assert list(back["layers"]) == [0, 1]
  assert back["layers"][1]["bias"].dtype == jnp.bfloat16 and back["layers"][1]["kernel"].codebook.dtype == jnp.bfloat16
  chex.assert_trees_all_equal(back, jax.tree.map(np.asarray, tree))


def test_a_key_that_is_neither_text_nor_integer_fails_naming_both():
  with pytest.raises(TypeError, match="strings or integers"):
    codec.encode({"a": {(1, 2): np.zeros(2)}})


# Files written before format version 3, as bytes (by the writer of commit 40d05f5): they must read as they did.
# A 4x3 kernel (k = 3, b = 2) and a float32 bias; version 2: the same with integer keys and bfloat16.
VERSION_1_FILE = bytes.fromhex(
    "44434a41585a0d0a0100020000001339e457680000000000000003000600706172616d730200666306006b65726e656c01037c7531"
    "02040000000000000003000000000000000300000002000000bf0000803e0000803f05000000000000000400000000020201010000"
    "00000000007c040000000202020202000000000000002740787f9272360000000000000003000600706172616d7302006663040062"
    "6961730003 3c66340103000000000000000c000000000000000000003f000080bf00000040082714380fe13aef".replace(" ", ""))
VERSION_2_FILE = bytes.fromhex(
    "44434a41585a0d0a020002000000bd4b70d16d0000000000000003000006006c6179657273010100300006006b65726e656c01037c"
    "7531020400000000000000030000000000000003000000020862666c6f6174313600bf803e803f050000000000000004000000000202"
    "0101000000000000007c040000000202020202000000000000002740c4a375bd370000000000000003000006006c617965727301010030"
    "00040062696173000862666c6f617431360103000000000000000600000000000000003f80bf00408eec17d6334e6a8a")
OLD_MASK = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]], bool)
OLD_INDICES = np.array([[2, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 2]], np.uint8)


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_versions_1_and_2_still_read_and_write_back_the_same_bytes(tmp_path, version):
  content = VERSION_1_FILE if version == 1 else VERSION_2_FILE
  path = tmp_path / "old.dcz"
  path.write_bytes(content)
  tree = codec.read(path)
  layer = tree["params"]["fc"] if version == 1 else tree["layers"][0]
  kernel, bias = layer["kernel"], layer["bias"]
  np.testing.assert_array_equal(kernel.mask, OLD_MASK)
  np.testing.assert_array_equal(kernel.indices, OLD_INDICES)
  np.testing.assert_array_equal(np.asarray(kernel.codebook, np.float32), [-0.5, 0.25, 1.0])
  np.testing.assert_array_equal(np.asarray(bias, np.float32), [0.5, -1.0, 2.0])
  assert codec.read_metadata(path) is None
  assert codec.encode(tree, 2)[0] == content  # Written again without metadata: the same version and bytes.


METADATA = {"model": {"name": "lenet300_100", "dtype": "float32"}, "input_shape": [28, 28, 1],
            "dataset": "mnist", "num_classes": 10, "mean": [0.1307], "std": [0.3081], "note": "é"}


def test_metadata_round_trips_as_version_3_and_leaves_the_tree_as_it_was(tmp_path):
  tree = mixed_tree()
  codec.write(tmp_path / "plain.dcz", tree)
  codec.write(tmp_path / "described.dcz", tree, metadata=METADATA)
  content = (tmp_path / "described.dcz").read_bytes()
  assert struct.unpack_from("<H", content, 8)[0] == 3
  assert codec.read_metadata(tmp_path / "described.dcz") == METADATA
  assert codec.read_metadata(tmp_path / "plain.dcz") is None
  assert_same_leaves(codec.read(tmp_path / "described.dcz"), codec.read(tmp_path / "plain.dcz"))
  # The metadata record comes first: depth 0, kind 3, then the JSON text.
  length = struct.unpack_from("<Q", content, 18)[0]
  assert content[26:29] == b"\x00\x00\x03" and json.loads(content[29:26 + length]) == METADATA


def _with_metadata_body(content: bytes, body: bytes) -> bytes:
  """`content` (version 3) with record 0's body replaced, every CRC and length fixed."""
  length = struct.unpack_from("<Q", content, 18)[0]
  rest = content[26 + length + 4:-4]
  head = struct.pack("<Q", len(body))
  out = content[:18] + head + body + struct.pack("<I", zlib.crc32(head + body)) + rest
  return out + struct.pack("<I", zlib.crc32(out))


@pytest.mark.parametrize("body, message", [
    (b"\x00\x00\x03{\"model\": ", "record 0: the metadata is not JSON text"),
    (b"\x00\x00\x03[1, 2]", "record 0: the metadata is a JSON list, not an object"),
    (b"\x00\x00\x03\xff\xfe", "record 0: the metadata is not JSON text"),
    (b"\x00\x00\x00", "record 0: a version-3 file starts with a metadata record \\(depth 0, kind 3\\); "
                      "this one has depth 0, kind 0"),
], ids=["truncated JSON", "not an object", "not UTF-8", "not a metadata record"])
def test_corrupt_metadata_fails_in_one_line_naming_the_file(tmp_path, body, message):
  content, _ = codec.encode(mixed_tree(), metadata=METADATA)
  path = tmp_path / "bad.dcz"
  path.write_bytes(_with_metadata_body(content, body))
  for read in (codec.read, codec.read_metadata):
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {message}") as error:
      read(path)
    assert "\n" not in str(error.value)


def test_a_flipped_bit_in_the_metadata_fails_its_crc(tmp_path):
  content = bytearray(codec.encode(mixed_tree(), metadata=METADATA)[0])
  content[40] ^= 1
  path = tmp_path / "bad.dcz"
  path.write_bytes(bytes(content))
  with pytest.raises(DataError, match=r"record 0 \('metadata'\) is corrupt: CRC32 mismatch"):
    codec.read_metadata(path)


def test_a_version_3_file_without_its_metadata_record_is_rejected(tmp_path):
  content = bytearray(codec.encode(mixed_tree())[0])  # Version 1 records, header set to 3.
  content[8:10] = struct.pack("<H", 3)
  content[14:18] = struct.pack("<I", zlib.crc32(bytes(content[:14])))
  content[-4:] = struct.pack("<I", zlib.crc32(bytes(content[:-4])))
  path = tmp_path / "bad.dcz"
  path.write_bytes(bytes(content))
  with pytest.raises(DataError, match="starts with a metadata record"):
    codec.read(path)


def test_metadata_after_the_first_record_is_rejected(tmp_path):
  content, _ = codec.encode({"b": np.zeros(2, np.float32)}, metadata=METADATA)
  length = struct.unpack_from("<Q", content, 18)[0]
  metadata_record = content[18:18 + 8 + length + 4]
  body = content[18 + len(metadata_record):-4]
  out = bytearray(content[:18] + metadata_record + body + metadata_record)
  out[10:14] = struct.pack("<I", 3)
  out[14:18] = struct.pack("<I", zlib.crc32(bytes(out[:14])))
  out += struct.pack("<I", zlib.crc32(bytes(out)))
  path = tmp_path / "bad.dcz"
  path.write_bytes(bytes(out))
  with pytest.raises(DataError, match="record 2: a record needs a key path of depth >= 1"):
    codec.read(path)


def test_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
  with pytest.raises(TypeError, match="JSON values"):
    codec.write(tmp_path / "m.dcz", mixed_tree(), metadata={"mean": np.zeros(3)})
  with pytest.raises(TypeError, match="JSON object"):
    codec.write(tmp_path / "m.dcz", mixed_tree(), metadata=[1, 2])
  assert not (tmp_path / "m.dcz").exists()


def test_dense_read_gives_each_kernel_materialised(model_file):
  kernels = codec.read(model_file)
  dense = codec.read(model_file, dense=True)
  for keys in (("params", "conv1", "kernel"), ("params", "fc1", "kernel"), ("params", "head", "kernel")):
    kernel, array = kernels, dense
    for key in keys:
      kernel, array = kernel[key], array[key]
    assert isinstance(array, np.ndarray) and array.ctypes.data % 64 == 0
    np.testing.assert_array_equal(array, np.asarray(kernel.materialize()))


@pytest.mark.parametrize("shape", [(7,), (5, 3), (3, 3, 2, 4)])
def test_kernel_positions_undo_the_neuron_major_walk(shape):
  size = int(np.prod(shape))
  order = codec.neuron_major(np.arange(size).reshape(shape)).reshape(-1)  # C position at each walk position.
  np.testing.assert_array_equal(codec.kernel_positions(np.arange(size), shape), order)


@pytest.mark.parametrize("metadata", [None, METADATA])
def test_a_deflated_file_is_version_4_smaller_and_reads_back_the_same_tree_and_metadata(tmp_path, metadata):
  tree = mixed_tree()
  plain = codec.write(tmp_path / "plain.dcz", tree, "auto", metadata)
  deflated = codec.write(tmp_path / "deflated.dcz", tree, "auto", metadata, deflate=True)
  content = (tmp_path / "deflated.dcz").read_bytes()
  assert content[:8] == codec.MAGIC and struct.unpack_from("<H", content, 8)[0] == 4
  assert deflated.totals["file_bytes"] == len(content) < plain.totals["file_bytes"]
  # It holds the plain file, byte for byte: raw DEFLATE after the 22-byte header, a CRC32 last.
  inner = (tmp_path / "plain.dcz").read_bytes()
  assert struct.unpack_from("<Q", content, 10)[0] == len(inner)
  assert zlib.decompress(content[22:-4], -15) == inner
  assert_same_leaves(codec.read(tmp_path / "deflated.dcz"), codec.read(tmp_path / "plain.dcz"))
  assert codec.read_metadata(tmp_path / "deflated.dcz") == metadata
  assert_same_leaves(codec.read(tmp_path / "deflated.dcz", dense=True), codec.read(tmp_path / "plain.dcz", dense=True))


def _deflated_file(header_size: int, inner: bytes, stream: bytes | None = None) -> bytes:
  """A version-4 file saying the inner file has `header_size` bytes, holding `stream` (default: `inner` deflated)."""
  header = struct.pack("<8sHQ", codec.MAGIC, 4, header_size)
  if stream is None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = compressor.compress(inner) + compressor.flush()
  data = header + struct.pack("<I", zlib.crc32(header)) + stream
  return data + struct.pack("<I", zlib.crc32(data))


@pytest.mark.parametrize("case, message", [
    ("flipped", "file CRC32 mismatch"),
    ("truncated", "file CRC32 mismatch"),
    ("header", "header CRC mismatch"),
    ("size too small", "not the 99 its header says"),
    ("size too large", "holds"),
    ("not deflate", "does not decode"),
    ("nested", "holds another version-4 file"),
    ("inner corrupt", "record 0 ('params/conv1/kernel') is corrupt"),
])
def test_a_bad_deflated_file_fails_in_one_line_naming_the_file(tmp_path, model_file, case, message):
  inner = model_file.read_bytes()
  good = codec.deflated(inner)
  content = {
      "flipped": good[:30] + bytes([good[30] ^ 1]) + good[31:],
      "truncated": good[:-9],
      "header": good[:12] + bytes([good[12] ^ 1]) + good[13:],
      "size too small": _deflated_file(99, inner),
      "size too large": _deflated_file(len(inner) + 1, inner),
      "not deflate": _deflated_file(len(inner), inner, stream=b"\xff" * 40),
      "nested": _deflated_file(len(good), good),
      "inner corrupt": _deflated_file(len(inner), inner[:60] + bytes([inner[60] ^ 1]) + inner[61:]),
  }[case]
  path = tmp_path / "bad.dcz"
  path.write_bytes(content)
  with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + re.escape(message)):
    codec.read(path)


def grouped_tree(granularity: str, seed: int = 0, layer_granularity: tuple = ()) -> dict:
  """`mixed_tree`'s parameters shared anew at `granularity` (groups of 5 channels: 16 = 5 + 5 + 5 + 1)."""
  params = mixed_tree(seed)["params"]
  kernels = {name: layer["kernel"] for name, layer in params.items() if "kernel" in layer}
  weights = {name: {"kernel": jnp.asarray(kernel.materialize()) + 0.01 * jnp.arange(kernel.mask.shape[-1])}
             for name, kernel in kernels.items()}  # Channels of different values, so that rows differ.
  masks = {name: {"kernel": jnp.asarray(kernel.mask)} for name, kernel in kernels.items()}
  shared, _ = share.quantize(weights, masks, share.Plan(k=16, granularity=granularity, group_size=5,
                                                        layer_granularity=layer_granularity))
  return {"params": shared, "batch_stats": mixed_tree(seed)["batch_stats"]}


@pytest.mark.parametrize("granularity", share.GRANULARITIES)
@pytest.mark.parametrize("metadata, deflate", [(None, False), (METADATA, False), (METADATA, True)])
def test_each_granularity_round_trips_bit_for_bit(tmp_path, granularity, metadata, deflate):
  tree = grouped_tree(granularity)
  path = tmp_path / "model.dcz"
  codec.write(path, tree, "auto", metadata, deflate)
  back = codec.read(path)
  assert_same_leaves(back, tree)
  for name, layer in tree["params"].items():
    assert back["params"][name]["kernel"].group_size == layer["kernel"].group_size == {
        "tensor": 0, "channel": 1, "group": 5}[granularity]
  shapes = {"tensor": (16,), "channel": (16, 16), "group": (4, 16)}  # conv1's 16 channels.
  assert back["params"]["conv1"]["kernel"].codebook.shape == shapes[granularity]
  inner = codec._inflated(memoryview(path.read_bytes()), path)
  version = struct.unpack("<H", inner[8:10])[0]
  assert version == (codec.GROUPED_VERSION if granularity != "tensor" else 1 if metadata is None else 3)
  assert codec.read_metadata(path) == (metadata if metadata is not None or granularity == "tensor" else {})
  dense = codec.read(path, dense=True)
  for name, layer in tree["params"].items():
    np.testing.assert_array_equal(dense["params"][name]["kernel"], np.asarray(layer["kernel"].materialize()))


@pytest.mark.parametrize("deflate", [False, True])
def test_a_granularity_per_layer_round_trips_bit_for_bit(tmp_path, deflate):
  tree = grouped_tree("tensor", layer_granularity=(("conv1/.*", "channel"), ("head/.*", "group")))
  assert {name: layer["kernel"].codebook.shape for name, layer in tree["params"].items()} == {
      "conv1": (16, 16), "fc1": (16,), "head": (2, 16)}  # head's 10 channels in groups of 5.
  path = tmp_path / "model.dcz"
  codec.write(path, tree, "auto", METADATA, deflate)
  back = codec.read(path)
  assert_same_leaves(back, tree)
  assert {name: layer["kernel"].group_size for name, layer in back["params"].items()} == {
      "conv1": 1, "fc1": 0, "head": 5}
  assert struct.unpack("<H", codec._inflated(memoryview(path.read_bytes()), path)[8:10])[0] == codec.GROUPED_VERSION
  dense = codec.read(path, dense=True)
  for name, layer in tree["params"].items():
    np.testing.assert_array_equal(dense["params"][name]["kernel"], np.asarray(layer["kernel"].materialize()))


def test_grouped_layer_statistics_count_every_codebook_row():
  tree = grouped_tree("channel")
  encoded, row = codec.encode_layer(tree["params"]["fc1"]["kernel"], 5)
  tensor_encoded, tensor_row = codec.encode_layer(grouped_tree("tensor")["params"]["fc1"]["kernel"], 5)
  assert (row["codebooks"], row["clusters"], row["codebook_bytes"]) == (120, 16, 120 * 16 * 4)
  assert tensor_row["codebook_bytes"] == 16 * 4
  assert row["bits_pqh"] - tensor_row["bits_pqh"] >= 8 * (120 - 1) * 16 * 4 - 8 * 200  # Codebooks, give or take codes.


def test_float16_narrows_every_row_of_a_grouped_codebook_and_reads_back_exactly(tmp_path):
  tree = codec.narrow_codebooks(grouped_tree("group"), "float16")
  codebook = tree["params"]["fc1"]["kernel"].codebook
  assert codebook.dtype == np.float16 and codebook.shape == (24, 16)
  path = tmp_path / "model.dcz"
  codec.write(path, tree)
  assert_same_leaves(codec.read(path), tree)


def _as_version(content: bytes, version: int, path: Path) -> Path:
  """The file `content` with the header's format version set to `version`, both checksums made right again."""
  content = bytearray(content)
  content[8:10] = struct.pack("<H", version)
  content[14:18] = struct.pack("<I", zlib.crc32(bytes(content[:14])))
  content[-4:] = struct.pack("<I", zlib.crc32(bytes(content[:-4])))
  path.write_bytes(bytes(content))
  return path


def test_a_grouped_record_in_a_file_before_version_5_is_rejected(tmp_path):
  path = _as_version(codec.encode(grouped_tree("channel"), metadata=METADATA)[0], 3, tmp_path / "bad.dcz")
  with pytest.raises(DataError, match="unknown record kind 4"):
    codec.read(path)


def test_a_grouped_codebook_that_does_not_cover_the_channels_is_refused():
  kernel = grouped_tree("group")["params"]["fc1"]["kernel"]
  with pytest.raises(ValueError, match=r"codebook must be \[24, k\]"):
    codec.encode_layer(kernel.replace(codebook=kernel.codebook[:-1]))


def vector_tree(d: int, seed: int = 0) -> dict:
  """`mixed_tree`'s kernels shared anew as vectors of d: fan-ins 27, 400 and 120 (2 and 4 divide the last two)."""
  params = mixed_tree(seed)["params"]
  kernels = {name: layer["kernel"] for name, layer in params.items() if "kernel" in layer}
  weights = {name: {"kernel": jnp.asarray(kernel.materialize())} for name, kernel in kernels.items()}
  masks = {name: {"kernel": jnp.asarray(kernel.mask)} for name, kernel in kernels.items()}
  shared, _ = share.quantize(weights, masks, share.Plan(k=16, vector_size=d, init="kmeans++"))
  return {"params": shared, "batch_stats": mixed_tree(seed)["batch_stats"]}


@pytest.mark.parametrize("d", [2, 4])
@pytest.mark.parametrize("index_bits", [1, 3, "auto"])
@pytest.mark.parametrize("deflate", [False, True])
def test_vectors_round_trip_bit_for_bit_and_decode_dense_to_the_shared_kernels(tmp_path, d, index_bits, deflate):
  tree = vector_tree(d)
  path = tmp_path / "model.dcz"
  codec.write(path, tree, index_bits, deflate=deflate)
  back = codec.read(path)
  assert_same_leaves(back, tree)
  assert all(back["params"][name]["kernel"].vector_size == d for name in ("conv1", "fc1", "head"))
  inner = codec._inflated(memoryview(path.read_bytes()), path)
  assert struct.unpack("<H", inner[8:10])[0] == codec.VECTOR_VERSION and codec.read_metadata(path) == {}
  dense = codec.read(path, dense=True)
  for name, layer in tree["params"].items():
    np.testing.assert_array_equal(dense["params"][name]["kernel"], np.asarray(layer["kernel"].materialize()))


def test_escaped_fields_mark_fillers_by_the_top_field_alone():
  positions = np.array([1, 4, 15, 16])
  # b = 3: jumps of 1..7 carry a weight, field 7 is a filler of 7: 2, 3, then 11 = 7 + 4, then 1.
  fields = codec.escaped_fields(positions, 3)
  np.testing.assert_array_equal(fields, [1, 2, 7, 3, 0])
  np.testing.assert_array_equal(codec.escaped_positions(fields, 3, 20), positions)
  with pytest.raises(ValueError, match="reach position 16 of a kernel of 16"):
    codec.escaped_positions(fields, 3, 16)


def test_vector_statistics_count_an_index_per_vector_and_the_k_by_d_codebook():
  kernel = vector_tree(4)["params"]["fc1"]["kernel"]
  _, row = codec.encode_layer(kernel, 5)
  vectors = int(share.vectors(np.asarray(kernel.mask), 4).any(-1).sum())
  assert (row["vector_size"], row["vectors"], row["clusters"], row["codebooks"]) == (4, vectors, 16, 1)
  assert row["codebook_bytes"] == 16 * 4 * 4 and row["weight_bits_pq"] == round(vectors * 4 / row["kept"], 2)
  assert row["bits_pq"] == vectors * 4 + row["entries"] * 5 + 8 * 16 * 4 * 4


# The old writer's bytes of `mixed_tree(0)` (commit ba11fff, before vectors existed): files without vectors keep them.
MIXED_TREE_SHA256 = {None: "a34c68ab21e14e018473a0391e47bfb09d5f67863c61fd9a86c6419377410891",
                     "metadata": "432b7ee2ca6c77febd7b7608dc9f14143e93556b10fa9cf14d5c8ba97967dcd9"}


@pytest.mark.parametrize("metadata", [None, "metadata"])
def test_files_without_vectors_keep_the_bytes_of_the_writer_before_vectors(metadata):
  content, _ = codec.encode(mixed_tree(0), "auto", METADATA if metadata else None)
  assert hashlib.sha256(content).hexdigest() == MIXED_TREE_SHA256[metadata]


def test_a_vector_record_in_a_file_before_version_6_is_rejected(tmp_path):
  path = _as_version(codec.encode(vector_tree(2), metadata=METADATA)[0], codec.GROUPED_VERSION, tmp_path / "bad.dcz")
  with pytest.raises(DataError, match="unknown record kind 5"):
    codec.read(path)


def test_a_vector_kernel_whose_indices_are_not_one_per_vector_is_refused():
  kernel = vector_tree(2)["params"]["fc1"]["kernel"]
  with pytest.raises(ValueError, match=r"indices must be unsigned \[120, 200\]"):
    codec.encode_layer(kernel.replace(indices=kernel.indices[:, :-1]))
