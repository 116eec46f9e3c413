"""Reliability (issue 8): damaged model files, a killed run resumed, bad inputs in one line, NaN losses.

  DC_JAX_DATA_DIR=../shared/data python -m pytest tests/test_reliability.py -q -s
"""

import collections
import dataclasses
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import base
from dc_jax import codec, models, train
from dc_jax.errors import DataError
from tests.conftest import synthetic_dataset
from tests.test_codec import shared_kernel

# Fuzzing the compressed file.

_HEADER_BYTES = codec._HEADER.size + 4  # Magic, version, count, CRC32.


def _fuzz_tree() -> dict:
  """A small model's variables: shared kernels of 4, 32 and 300 clusters (uint16 indices), raw leaves, an empty dict."""
  rng = np.random.default_rng(0)
  return {
      "params": {
          "conv1": {"kernel": shared_kernel(0, (3, 3, 1, 8), 300, 0.7),
                    "bias": rng.standard_normal(8).astype(np.float32)},
          "bn1": {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)},
          "fc1": {"kernel": shared_kernel(1, (200, 40), 32, 0.08), "bias": rng.standard_normal(40).astype(np.float32)},
          "head": {"kernel": shared_kernel(2, (40, 10), 4, 0.5), "bias": np.zeros(10, np.float32)},
      },
      "batch_stats": {"bn1": {"mean": rng.standard_normal(8).astype(np.float32),
                              "var": rng.random(8).astype(np.float32)}},
      "counters": {"step": np.array(1234, np.int64)},
      "unused": {},
  }


def _record_spans(data: bytes) -> list[tuple[int, int]]:
  """(start, end) of each record's frame (length, body, CRC32) in a well-formed file."""
  spans, offset = [], _HEADER_BYTES
  while offset < len(data) - 4:  # The file's CRC32 follows the last record.
    (size,) = struct.unpack_from("<Q", data, offset)
    spans.append((offset, offset + 8 + size + 4))
    offset = spans[-1][1]
  return spans


def _random_bytes(rng: np.random.Generator, n: int) -> bytes:
  return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _flip_bits(data, rng):
  out = bytearray(data)
  for position in rng.integers(0, 8 * len(data), rng.integers(1, 9)):
    out[position // 8] ^= 1 << (position % 8)
  return bytes(out)


def _set_bytes(data, rng):
  out = bytearray(data)
  for position in rng.integers(0, len(data), rng.integers(1, 9)):
    out[position] = rng.integers(0, 256)
  return bytes(out)


def _truncate(data, rng):
  return data[:rng.integers(0, len(data))]


def _append(data, rng):
  return data + _random_bytes(rng, rng.integers(1, 65))


def _overwrite_range(data, rng):
  """A run of random bytes, zeros or 0xFF: a bad sector, a partial write."""
  size = int(rng.integers(1, 513))
  start = int(rng.integers(0, len(data)))
  fill = rng.choice(["random", "zeros", "ones"])
  block = {"random": _random_bytes(rng, size), "zeros": bytes(size), "ones": b"\xff" * size}[fill]
  return (data[:start] + block + data[start + size:])[:len(data)]


def _shuffle_records(data, rng):
  """Whole records swapped, repeated in place of another, dropped or repeated: every record's CRC still holds."""
  records = [data[a:b] for a, b in _record_spans(data)]
  i, j = rng.choice(len(records), 2, replace=False)
  how = rng.choice(["swap", "copy over", "drop", "repeat"])
  if how == "swap":
    records[i], records[j] = records[j], records[i]
  elif how == "copy over":
    records[j] = records[i]
  elif how == "drop":
    del records[i]
  else:
    records.insert(j, records[i])
  return data[:_HEADER_BYTES] + b"".join(records) + data[-4:]


# Each kind of damage, and how many files of it; the last two cost a whole read each.
DAMAGE = {"flip 1-8 bits": (_flip_bits, 800), "set 1-8 bytes": (_set_bytes, 700), "truncate": (_truncate, 500),
          "overwrite a range": (_overwrite_range, 500), "append 1-64 bytes": (_append, 200),
          "shuffle records": (_shuffle_records, 300)}


def _with_crcs(data: bytes) -> bytes:
  """The file with its header's, every record's and the file's CRC32 recomputed: damage the CRCs cannot see."""
  out = bytearray(data)
  out[14:18] = struct.pack("<I", zlib.crc32(out[:14]))
  for start, end in _record_spans(data):
    out[end - 4:end] = struct.pack("<I", zlib.crc32(out[start:end - 4]))
  out[-4:] = struct.pack("<I", zlib.crc32(out[:-4]))
  return bytes(out)


def _rewrite_body(data, rng):
  """1-4 bytes of one record's body set at random, then the CRCs fixed: a writer's bug or a crafted file."""
  start, end = _record_spans(data)[rng.integers(0, len(_record_spans(data)))]
  out = bytearray(data)
  for position in rng.integers(start + 8, end - 4, rng.integers(1, 5)):
    out[position] = rng.integers(0, 256)
  return _with_crcs(bytes(out))


def _rewrite_field(data, rng):
  """One small field of one record (a length, count, width, dimension, dtype byte) set to an edge value, CRCs fixed."""
  start, end = _record_spans(data)[rng.integers(0, len(_record_spans(data)))]
  position = int(rng.integers(start + 8, end - 4))
  width = int(rng.choice([1, 2, 4, 8]))
  values = [0, 1, 2, 0x7F, 0xFF, 2 ** (8 * width - 1), 2 ** (8 * width) - 1]
  value = values[rng.integers(0, len(values))]
  width = min(width, end - 4 - position)  # Within the body.
  out = bytearray(data)
  out[position:position + width] = value.to_bytes(8, "little")[:width]
  return _with_crcs(bytes(out))


def _rewrite_header(data, rng):
  """The header's count or version set at random, CRC fixed."""
  out = bytearray(data)
  field = rng.choice(["count", "version"])
  if field == "count":
    out[10:14] = struct.pack("<I", int(rng.choice([0, 1, len(_record_spans(data)) - 1, len(_record_spans(data)) + 1,
                                                   2 ** 32 - 1])))
  else:
    out[8:10] = struct.pack("<H", int(rng.integers(0, 2 ** 16)))
  return _with_crcs(bytes(out))


CRAFTED = {"set body bytes, CRCs fixed": _rewrite_body, "set a field to an edge value, CRCs fixed": _rewrite_field,
           "set count or version, CRC fixed": _rewrite_header}


def _same_tree(a, b) -> bool:
  """Same structure (SharedKernel nodes included), and every leaf of the same dtype, shape and bytes."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  pairs = [(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in pairs)


def _first_difference(a: bytes, b: bytes) -> int:
  n = min(len(a), len(b))
  differ = np.flatnonzero(np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8))
  return int(differ[0]) if differ.size else n


def _print_table(title: str, counts: dict[str, collections.Counter]) -> None:
  outcomes = ("detected", "identical", "silent", "other")
  print(f"\n{title}\n{'mutation':<42}{'total':>7}" + "".join(f"{o:>11}" for o in outcomes))
  for kind, count in counts.items():
    print(f"{kind:<42}{sum(count.values()):>7}" + "".join(f"{count[o]:>11}" for o in outcomes))
  total = sum(counts.values(), collections.Counter())
  print(f"{'all':<42}{sum(total.values()):>7}" + "".join(f"{total[o]:>11}" for o in outcomes))


def test_damaged_files_fail_with_a_data_error_naming_file_and_record_or_read_back_identical(tmp_path):
  tree = _fuzz_tree()
  original_path = tmp_path / "model.dcz"
  codec.write(original_path, tree, index_bits="auto")
  original = original_path.read_bytes()
  spans = _record_spans(original)
  assert len(spans) == 12 and spans[-1][1] == len(original) - 4
  path = tmp_path / "damaged.dcz"
  counts = {kind: collections.Counter() for kind in DAMAGE}
  failures = []
  plan = [kind for kind, (_, n) in DAMAGE.items() for _ in range(n)]
  changed = 0  # Mutations that changed the file: a byte set to its own value changes nothing.
  for seed, kind in enumerate(plan):
    damaged = DAMAGE[kind][0](original, np.random.default_rng(seed))
    changed += damaged != original
    path.write_bytes(damaged)
    try:
      back = codec.read(path)
    except DataError as error:
      counts[kind]["detected"] += 1
      message = str(error)
      first = _first_difference(original, damaged)
      record = next((i for i, (start, end) in enumerate(spans) if start <= first < end), None)
      # A dropped or repeated record shows where the count runs out, not where it went missing.
      named = f"record {record}" in message or (kind == "shuffle records" and (
          "record" in message or "trailing bytes" in message))
      if not message.startswith(f"{path}: ") or (record is not None and not named):
        failures.append(f"seed {seed} ({kind}), damage at byte {first} (record {record}): unclear message: {message}")
      continue
    except Exception as error:  # pylint: disable=broad-except
      counts[kind]["other"] += 1
      failures.append(f"seed {seed} ({kind}): {type(error).__name__}: {error}")
      continue
    if _same_tree(back, tree):
      counts[kind]["identical"] += 1
    else:
      counts[kind]["silent"] += 1
      failures.append(f"seed {seed} ({kind}): read back a different tree without an error")
  _print_table("damaged files (CRCs as damaged)", counts)
  assert not failures, "\n".join(failures[:20])
  # Every change is detected: the whole-file CRC32 catches even records swapped whole.
  assert len(plan) == 3000 and sum(c["detected"] for c in counts.values()) == changed > 2990


def test_files_with_recomputed_crcs_fail_with_a_data_error_or_give_a_tree_that_writes_back_the_same(tmp_path):
  """Damage the CRCs cannot see: the reader must not crash, and what it accepts must be a valid tree."""
  original_path = tmp_path / "model.dcz"
  codec.write(original_path, _fuzz_tree(), index_bits="auto")
  original = original_path.read_bytes()
  path, again = tmp_path / "crafted.dcz", tmp_path / "again.dcz"
  counts = {kind: collections.Counter() for kind in CRAFTED}
  failures = []
  for seed in range(450):
    kind = list(CRAFTED)[seed % len(CRAFTED)]
    path.write_bytes(CRAFTED[kind](original, np.random.default_rng(10_000 + seed)))
    try:
      back = codec.read(path)
    except DataError as error:
      counts[kind]["detected"] += 1
      if not str(error).startswith(f"{path}: "):
        failures.append(f"seed {seed} ({kind}): the message does not name the file: {error}")
      continue
    except Exception as error:  # pylint: disable=broad-except
      counts[kind]["other"] += 1
      failures.append(f"seed {seed} ({kind}): {type(error).__name__}: {error}")
      continue
    counts[kind]["identical" if _same_tree(back, _fuzz_tree()) else "silent"] += 1
    try:
      codec.write(again, back)
      assert _same_tree(codec.read(again), back)
    except Exception as error:  # pylint: disable=broad-except
      failures.append(f"seed {seed} ({kind}): read gave a tree that does not write back: "
                      f"{type(error).__name__}: {error}")
  _print_table("crafted files (CRCs recomputed; 'silent' = a valid file of another tree)", counts)
  assert not failures, "\n".join(failures[:20])


def _file(*records: tuple[tuple[str, ...], object]) -> bytes:
  """A file of these (path, leaf) records in this order, whatever the paths: CRCs right, content crafted."""
  header = codec._HEADER.pack(codec.MAGIC, codec.VERSION, len(records))
  content = (header + struct.pack("<I", zlib.crc32(header))
             + b"".join(codec._framed(codec._record_body(keys, leaf, None, codec.VERSION)) for keys, leaf in records))
  return content + struct.pack("<I", zlib.crc32(content))


_ONES = np.ones(3, np.float32)


@pytest.mark.parametrize("content, message", [
    (_file((("a", "b"), _ONES), (("a", "b"), _ONES)), r"record 1 \('a/b'\) repeats the path of record 0"),
    (_file((("a",), _ONES), (("a", "b"), _ONES)), r"record 1 \('a/b'\) lies under the leaf of record 0 \('a'\)"),
    (_file((("a", "b"), _ONES), (("a",), _ONES)), r"record 1 \('a'\) is a leaf, but record 0 holds a leaf under it"),
    (_file((("a", "b"), _ONES), (("a",), traverse_util.empty_node)), r"record 1 \('a'\) is a leaf, but record 0"),
    (_file(((), _ONES)), r"record 0: a record needs a key path of depth >= 1"),
    (_with_crcs(_file((("a",), _ONES)).replace(b"<f4", b">f4")),
     r"record 0 \('a'\): dtype '>f4' is not a little-endian"),
], ids=["same path twice", "leaf under a leaf", "leaf over a dict", "empty dict over a dict", "no path", "big-endian"])
def test_records_that_write_never_produces_are_data_errors(tmp_path, content, message):
  """Paths that do not form one tree (flax's unflatten_dict would overwrite, merge or crash), a big-endian dtype."""
  path = tmp_path / "crafted.dcz"
  path.write_bytes(content)
  with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {message}"):
    codec.read(path)


def test_a_shared_kernel_too_large_for_memory_is_a_data_error_not_a_memory_error(tmp_path):
  """8 bytes of shape can ask for terabytes: the reader refuses before allocating."""
  path = tmp_path / "huge.dcz"
  codec.write(path, {"k": shared_kernel(0, (40, 10), 4, 0.0)})
  data = path.read_bytes()
  dim = data.index(struct.pack("<QQ", 40, 10))  # The shape follows the dtype and ndim.
  path.write_bytes(_with_crcs(data[:dim] + struct.pack("<QQ", 2**40, 10) + data[dim + 16:]))
  with pytest.raises(DataError, match=r"record 0 \('k'\): a shared kernel of shape \[1099511627776, 10\] has more"):
    codec.read(path)


# A run killed with SIGKILL, then resumed, ends where an uninterrupted run ends.

ROOT = Path(__file__).parents[1]
_SMALL_RUN = ("--config.train.epochs=2", "--config.train.batch_size=32", "--config.prune.rounds=2",
              "--config.prune.epochs=1", "--config.share.bits=4", "--config.share.epochs=1", "--config.share.sweep=()")


def _write_npz(path: Path, n_train: int = 256, **replace) -> Path:
  """The synthetic MNIST of tests/conftest.py as a .npz, with any arrays replaced."""
  dataset = synthetic_dataset("mnist", n_train=n_train, n_test=100)
  arrays = {"x_train": dataset.train_images[..., 0], "y_train": dataset.train_labels,
            "x_test": dataset.test_images[..., 0], "y_test": dataset.test_labels}
  arrays.update(replace)
  np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
  return path


def _launch_args(*args: str) -> list[str]:
  return [sys.executable, str(ROOT / "launch.py"), f"--config={ROOT / 'configs' / 'lenet300.py'}", *args]


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
  return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "DC_JAX_DATA_DIR": str(cwd)})


def _has_checkpoint(folder: Path) -> bool:
  return folder.is_dir() and any(p.name.isdigit() and (p / "commit_success.txt").exists() for p in folder.iterdir())


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
  """SIGKILL once `ready()` holds; fails if the process ends first."""
  deadline = time.monotonic() + timeout
  while not ready():
    assert process.poll() is None, f"the run ended before it could be killed:\n{process.communicate()[1][-3000:]}"
    assert time.monotonic() < deadline, "the run made no progress"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL


def _finish(process: subprocess.Popen) -> None:
  _, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]


def _temporary_files(workdir: Path) -> list[Path]:
  return sorted(workdir.rglob(".*.tmp"))


def _committed_steps(folder: Path) -> list[int]:
  """The checkpoints that orbax finished writing (an interrupted save has no commit_success.txt)."""
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def _metric_lines(workdir: Path) -> list[dict]:
  """metrics.jsonl's records; a line cut by the kill is skipped."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return records


def _train_steps_after(workdir: Path, lines_at_kill: int) -> list[int]:
  """The train steps that the resumed run logged (log_every_steps=1: every step)."""
  return [line["step"] for line in _metric_lines(workdir)[lines_at_kill:] if line["split"] == "train"]


# 1,024 examples in batches of 32: 32 steps an epoch, long enough that the kill, polled every 50 ms once the
# first epoch's checkpoint has committed, lands in the second epoch with that checkpoint the latest.
_KILL_RUN = ("--config.train.batch_size=32", "--config.train.log_every_steps=1", "--config.share.sweep=()")
_STEPS_PER_EPOCH = 32


@pytest.mark.slow
def test_a_run_killed_while_pruning_resumes_to_the_results_and_file_of_an_uninterrupted_run(tmp_path):
  data_path = _write_npz(tmp_path / "mnist.npz")
  args = lambda workdir: _launch_args(f"--workdir={workdir}", f"--config.data.path={data_path}", *_SMALL_RUN)
  straight = _popen(args(tmp_path / "straight"), tmp_path)  # Runs alongside the killed one.
  killed = tmp_path / "killed"
  _kill_when(_popen(args(killed), tmp_path), lambda: _has_checkpoint(killed / "pruned" / "round_0"))
  assert "encoded" not in json.loads((killed / "results.json").read_text())["stages"]
  _finish(_popen(args(killed), tmp_path))
  _finish(straight)

  resumed_stages = json.loads((killed / "results.json").read_text())["stages"]
  straight_stages = json.loads((tmp_path / "straight" / "results.json").read_text())["stages"]
  assert list(resumed_stages) == list(straight_stages) == ["baseline", "pruned", "shared", "encoded"]
  for stage in straight_stages:
    assert resumed_stages[stage]["test_accuracy"] == straight_stages[stage]["test_accuracy"], stage
  for stage in ("pruned", "shared", "encoded"):
    assert resumed_stages[stage]["layers"] == straight_stages[stage]["layers"], stage
  assert resumed_stages["encoded"]["file_bytes"] == straight_stages["encoded"]["file_bytes"]
  assert (killed / "model.dcz").read_bytes() == (tmp_path / "straight" / "model.dcz").read_bytes()
  assert _temporary_files(killed) == []


def test_a_run_killed_in_its_second_epoch_resumes_from_its_first_and_ends_as_an_uninterrupted_run(tmp_path):
  """The baseline stage only, killed mid-way through epoch 2: the resumed run must train from step 33, not restore."""
  data_path = _write_npz(tmp_path / "mnist.npz", n_train=1024)
  args = lambda workdir: _launch_args(f"--workdir={workdir}", f"--config.data.path={data_path}",
                                      "--config.stages=('baseline',)", "--config.train.epochs=3", *_KILL_RUN)
  straight = _popen(args(tmp_path / "straight"), tmp_path)
  killed = tmp_path / "killed"
  _kill_when(_popen(args(killed), tmp_path), lambda: _has_checkpoint(killed / "baseline"))
  # What was on disk at the kill: the first epoch's checkpoint only, and no results.
  assert _committed_steps(killed / "baseline") == [_STEPS_PER_EPOCH]
  assert not (killed / "results.json").exists()
  lines_at_kill = len(_metric_lines(killed))
  _finish(_popen(args(killed), tmp_path))
  _finish(straight)

  # The resumed run trained steps 33..96 from the checkpoint of step 32.
  assert _train_steps_after(killed, lines_at_kill) == list(range(_STEPS_PER_EPOCH + 1, 3 * _STEPS_PER_EPOCH + 1))
  resumed = json.loads((killed / "results.json").read_text())["stages"]["baseline"]
  uninterrupted = json.loads((tmp_path / "straight" / "results.json").read_text())["stages"]["baseline"]
  assert (resumed["steps"], resumed["test_accuracy"]) == (uninterrupted["steps"], uninterrupted["test_accuracy"])
  assert resumed["steps"] == 3 * _STEPS_PER_EPOCH
  weights = []
  for workdir in (killed, tmp_path / "straight"):
    manager = train.checkpoint_manager(workdir / "baseline")
    assert manager.latest_step() == 3 * _STEPS_PER_EPOCH
    weights.append(manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())["params"])
  chex.assert_trees_all_equal(*weights)
  assert _temporary_files(killed) == []


def test_a_run_killed_in_a_pruning_round_resumes_that_round_and_ends_as_an_uninterrupted_run(tmp_path):
  """Killed in the second epoch of pruning round 1 (of 2): the round resumes from its checkpoint, masks and all."""
  data_path = _write_npz(tmp_path / "mnist.npz", n_train=1024)
  args = lambda workdir: _launch_args(f"--workdir={workdir}", f"--config.data.path={data_path}",
                                      "--config.stages=('baseline', 'pruned')", "--config.train.epochs=1",
                                      "--config.prune.rounds=2", "--config.prune.epochs=2", *_KILL_RUN)
  straight = _popen(args(tmp_path / "straight"), tmp_path)
  killed = tmp_path / "killed"
  _kill_when(_popen(args(killed), tmp_path), lambda: _has_checkpoint(killed / "pruned" / "round_0"))
  assert _committed_steps(killed / "baseline") == [_STEPS_PER_EPOCH]
  assert _committed_steps(killed / "pruned" / "round_0") == [_STEPS_PER_EPOCH]  # Round 1 half done.
  assert _committed_steps(killed / "pruned" / "round_1") == []
  assert list(json.loads((killed / "results.json").read_text())["stages"]) == ["baseline"]
  lines_at_kill = len(_metric_lines(killed))
  _finish(_popen(args(killed), tmp_path))
  _finish(straight)

  # Round 1 went on from step 33 to 64, then round 2 ran whole: no baseline step, no round started over.
  two_epochs = list(range(1, 2 * _STEPS_PER_EPOCH + 1))
  assert _train_steps_after(killed, lines_at_kill) == two_epochs[_STEPS_PER_EPOCH:] + two_epochs
  resumed = json.loads((killed / "results.json").read_text())["stages"]["pruned"]
  uninterrupted = json.loads((tmp_path / "straight" / "results.json").read_text())["stages"]["pruned"]
  for field in ("test_accuracy", "kept_fraction", "layers", "rounds"):
    assert resumed[field] == uninterrupted[field], field
  states = []
  for workdir in (killed, tmp_path / "straight"):
    manager = train.checkpoint_manager(workdir / "pruned" / "round_1")
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    states.append({"params": restored["params"], "masks": restored["opt_state"]["masks"]})
  chex.assert_trees_all_equal(*states)
  assert _temporary_files(killed) == []


# Bad inputs end in one clear line: exit code 1, `error: ` naming the field or file and the value, no traceback.

# tests/test_pipeline.py checks more fields in-process (share.init, codec.index_bits, ...); they fail by the same path.
_BAD_CONFIGS = {
    "share.bits=17": (["--config.share.bits=17"], ["share.bits=17", "1..16"]),
    "prune.kept_fraction=0": (["--config.prune.kept_fraction=0"],
                              ["prune.kept_fraction=0.0", "0 < prune.kept_fraction"]),
    "prune.quality=-1": (["--config.prune.quality=-1", "--config.prune.criterion=threshold",
                          "--config.prune.schedule=han"], ["prune.quality=-1.0", "> 0"]),
    "model.name=resnet": (["--config.model.name=resnet"], ["model.name='resnet'", "lenet300_100"]),
    "data.name=imagenet": (["--config.data.name=imagenet"], ["data.name='imagenet'", "mnist"]),
}
_BAD_DATA = {  # Arrays replaced in the synthetic MNIST (None drops one), and what the error must name.
    "npz without y_test": ({"y_test": None}, ["bad.npz", "lacks arrays ['y_test']"]),
    "npz with label 10": ({"y_train": np.full(256, 10)}, ["bad.npz", "y_train", "[0, 10)", "[10, 10]"]),
    "npz of float32 images": ({"x_test": np.zeros((100, 28, 28), np.float32)},
                              ["bad.npz", "x_test is float32[100, 28, 28, 1]"]),
    "npz of 32x32 images": ({"x_train": np.zeros((256, 32, 32), np.uint8)},
                            ["bad.npz", "x_train is uint8[256, 32, 32, 1]"]),
}
_BAD_FILES = ("corrupt model.dcz", "a .npz given as the model")


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
  """Every bad launch, four at a time (each pays the imports): case -> (exit code, stderr, workdir)."""
  root = tmp_path_factory.mktemp("bad")
  good = _write_npz(root / "mnist.npz")
  commands = {}
  for case, (flags, _) in _BAD_CONFIGS.items():
    commands[case] = [f"--config.data.path={good}", *flags]
  for i, (case, (arrays, _)) in enumerate(_BAD_DATA.items()):
    (root / str(i)).mkdir()
    commands[case] = [f"--config.data.path={_write_npz(root / str(i) / 'bad.npz', **arrays)}"]
  model = root / "model.dcz"
  codec.write(model, _fuzz_tree())
  corrupt = bytearray(model.read_bytes())
  corrupt[100] ^= 0x10  # Inside record 0, params/conv1/kernel.
  (root / "corrupt.dcz").write_bytes(bytes(corrupt))
  for case, file in zip(_BAD_FILES, (root / "corrupt.dcz", good)):
    commands[case] = [f"--config.data.path={good}", f"--evaluate={file}"]
  results, running = {}, {}
  for case, flags in [*commands.items(), (None, None)]:
    while running and (len(running) >= 4 or case is None):
      done = next((c for c, (p, _) in running.items() if p.poll() is not None), None)
      if done is None:
        time.sleep(0.1)
        continue
      process, workdir = running.pop(done)
      results[done] = (process.returncode, process.communicate()[1], workdir)
    if case is not None:
      workdir = root / f"run_{len(results) + len(running)}"
      running[case] = (_popen(_launch_args(f"--workdir={workdir}", *flags), root), workdir)
  return results, root


def _assert_one_error_line(returncode: int, stderr: str, expected: list[str]) -> str:
  lines = stderr.strip().splitlines()
  assert returncode == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), stderr[-3000:]
  assert sum(line.startswith("error: ") for line in lines) == 1
  for part in expected:
    assert part in lines[-1], f"{part!r} not in {lines[-1]!r}"
  return lines[-1]


@pytest.mark.parametrize("case", [*_BAD_CONFIGS, *_BAD_DATA])
def test_a_bad_config_or_dataset_exits_1_with_one_error_line_before_any_training(bad_runs, case):
  results, _ = bad_runs
  returncode, stderr, workdir = results[case]
  line = _assert_one_error_line(returncode, stderr, {**_BAD_CONFIGS, **_BAD_DATA}[case][1])
  print(f"\n{case}: {line}")
  assert not (workdir / "results.json").exists() and not (workdir / "baseline").exists()


@pytest.mark.parametrize("case", _BAD_FILES)
def test_evaluating_a_bad_model_file_exits_1_with_one_error_line_naming_the_file(bad_runs, case):
  results, root = bad_runs
  expected = {
      "corrupt model.dcz": [f"{root / 'corrupt.dcz'}: record 0 ('params/conv1/kernel') is corrupt: CRC32 mismatch"],
      "a .npz given as the model": [f"{root / 'mnist.npz'}: not a dc_jax compressed model: starts with b'PK"],
  }[case]
  print(f"\n{case}: {_assert_one_error_line(*results[case][:2], expected)}")


# A NaN loss stops training and leaves the last good checkpoint as it was saved.

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # The poisoned batches divide by zero on purpose.
def test_a_nan_loss_raises_and_the_last_checkpoint_restores_to_the_finite_state_saved_before_it(tmp_path):
  dataset = synthetic_dataset("mnist", n_train=64)
  config = base.get_config().train
  config.update(epochs=1, batch_size=16, eval_batch_size=50, log_every_steps=50, learning_rate=0.05)
  model = models.LeNet300100()
  fresh = train.create_train_state(jax.random.key(0), model, dataset.image_shape, train.create_optimizer(config, 4))
  saved = train.fit(fresh, dataset, config, 0, tmp_path / "ckpt", tmp_path / "m.jsonl", None)
  assert int(saved.step) == 4
  chex.assert_tree_all_finite(saved.params)

  # Epoch 2 on poisoned batches: a zero std makes every normalised image Inf or NaN.
  poisoned = dataclasses.replace(dataset, std=np.zeros_like(dataset.std))
  config.epochs = 3
  with pytest.raises(train.TrainingDiverged, match=r"loss is nan at step 8 \(epoch 2\)"):
    train.fit(fresh, poisoned, config, 0, tmp_path / "ckpt", tmp_path / "m.jsonl", None)
  manager = train.checkpoint_manager(tmp_path / "ckpt")
  assert manager.all_steps() == [4]
  restored = train.restore_latest(manager, fresh)
  chex.assert_tree_all_finite(restored.params)
  chex.assert_trees_all_equal(restored.params, saved.params)
  chex.assert_trees_all_equal(restored.opt_state, saved.opt_state)
  assert int(restored.step) == 4
