"""TensorBoard event files written without TensorFlow: TensorFlow's own reader takes them back."""

import numpy as np

from dc_jax import events


def test_crc32c_matches_the_castagnoli_check_value():
  assert events.crc32c(b"123456789") == 0xE3069283
  assert events.crc32c(b"") == 0


def test_tensorflow_reads_back_every_scalar_with_its_step(tmp_path):
  writer = events.ScalarWriter(tmp_path / "tb")
  assert not (tmp_path / "tb").exists()  # Nothing written, no file: a restored stage leaves none.
  writer.scalars(3, {"baseline/train/loss": 2.5, "baseline/train/accuracy": 0.25})
  writer.scalars(300, {"baseline/test/accuracy": 0.875})
  import tensorflow as tf  # The reference reader; dc_jax itself never imports it.

  read = [(e.step, v.tag, v.simple_value) for e in tf.compat.v1.train.summary_iterator(str(writer.path))
          for v in e.summary.value]
  assert [(step, tag) for step, tag, _ in read] == [
      (3, "baseline/train/loss"), (3, "baseline/train/accuracy"), (300, "baseline/test/accuracy")]
  np.testing.assert_allclose([value for _, _, value in read], [2.5, 0.25, 0.875])
  first = next(iter(tf.compat.v1.train.summary_iterator(str(writer.path))))
  assert first.file_version == "brain.Event:2"
