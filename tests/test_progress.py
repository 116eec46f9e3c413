"""A visible run: progress lines with rate and time left when no bar is drawn, and the step time measured once."""

import logging

import jax
import pytest

from configs import base
from dc_jax import models, progress, train
from tests.conftest import synthetic_dataset


@pytest.mark.parametrize("seconds, text", [(12, "12 s"), (245, "4 min 05 s"), (12_000, "3 h 20 min"),
                                           (216_000, "2.5 days")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
  assert progress.duration(seconds) == text


def test_fit_logs_rate_and_time_left_and_reports_its_step_time_once(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)  # A line at every step after the first.
  monkeypatch.setattr(progress, "bar_shown", lambda: False)  # As in a log file, also under `pytest -s`.
  config = base.get_config().train
  config.update(dict(epochs=2, batch_size=16, eval_batch_size=50, lr_schedule="constant"))
  dataset = synthetic_dataset("mnist", n_train=96, n_test=50)
  state = train.create_train_state(jax.random.key(0), models.LeNet300100(), dataset.image_shape,
                                   train.create_optimizer(config, 6))
  step_times = []
  with caplog.at_level(logging.INFO):
    train.fit(state, dataset, config, 0, tmp_path / "baseline", tmp_path / "metrics.jsonl", None,
              on_step_time=step_times.append)
  lines = [r.getMessage() for r in caplog.records if "left in this stage" in r.getMessage()]
  assert lines and all(line.startswith("baseline: epoch ") and " images/s, about " in line for line in lines)
  assert lines[-1].startswith("baseline: epoch 2/2, step 6/6")
  assert len(step_times) == 1 and 0 < step_times[0] < 10
  assert any("baseline: epoch 2/2, train loss" in r.getMessage() for r in caplog.records)
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0  # TensorBoard beside metrics.jsonl.
