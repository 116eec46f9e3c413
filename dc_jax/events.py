"""Scalars as TensorBoard event files, written directly: no TensorFlow or TensorBoard in the training process.

An event file is a sequence of TFRecords (length, masked CRC-32C of the
length, data, masked CRC-32C of the data), each holding one `Event` protocol
buffer; a scalar is an Event with a step, a wall time and a Summary of
(tag, simple_value) pairs. That is all TensorBoard needs to plot training
curves, and it takes 60 lines here instead of importing TensorFlow (seconds
at startup, hundreds of MB) into every run.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecords; records here are a few hundred bytes."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tf_record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, scalars: dict[str, float] | None = None, file_version: str = "") -> bytes:
  """An `Event` protocol buffer: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version:
    out += _field(3, file_version.encode())
  if scalars:
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                      for tag, value in scalars.items())
    out += _field(5, values)
  return out


class ScalarWriter:
  """Appends scalars to one new event file in `folder`, made at the first write and flushed at every write."""

  def __init__(self, folder: Path):
    self.folder = folder
    self.path: Path | None = None

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self.path is None:
      self.folder.mkdir(parents=True, exist_ok=True)
      self.path = self.folder / f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
      self._write(event(0, time.time(), file_version="brain.Event:2"))
    self._write(event(step, time.time(), values))

  def _write(self, data: bytes) -> None:
    with self.path.open("ab") as f:
      f.write(tf_record(data))
