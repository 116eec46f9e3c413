"""Sensitivity analysis: each layer pruned alone, and kept fractions derived from a tolerated drop."""

import jax
import numpy as np
import optax
import pytest

from dc_jax import models, sensitivity, train
from tests.conftest import synthetic_dataset


def test_kept_fractions_take_the_smallest_fraction_within_the_drop():
  curves = {"ip1/kernel": [[0.5, 0.98], [0.1, 0.975], [0.05, 0.90]],
            "ip3/kernel": [[0.5, 0.95], [0.1, 0.90]]}
  kept = sensitivity.kept_fractions(curves, dense_accuracy=0.98, tolerated_drop=0.01)
  assert kept == {"ip1/kernel": 0.1, "ip3/kernel": 1.0}  # ip3 drops too much even at 50%: left dense.


def test_curves_prune_one_layer_at_a_time_and_keeping_all_changes_nothing(monkeypatch):
  dataset = synthetic_dataset("mnist", n_train=64, n_test=200)
  state = train.create_train_state(jax.random.key(0), models.LeNet300100(), (28, 28, 1), optax.sgd(0.1))
  dense = train.evaluate(state, dataset, 100)["accuracy"]
  evaluated = []  # Per evaluation: the kept fraction of every kernel.
  real_evaluate = train.evaluate

  def spy(pruned, *args):
    evaluated.append({name: float(np.mean(pruned.params[name]["kernel"] != 0)) for name in ("ip1", "ip2", "ip3")})
    return real_evaluate(pruned, *args)

  monkeypatch.setattr(train, "evaluate", spy)
  curves = sensitivity.curves(state, dataset, [r"ip[13]/kernel"], fractions=(1.0, 0.01), batch_size=100)
  assert list(curves) == ["ip1/kernel", "ip3/kernel"]
  assert [f for f, _ in curves["ip1/kernel"]] == [1.0, 0.01]
  assert curves["ip1/kernel"][0][1] == pytest.approx(dense)
  assert [{name: round(f, 2) for name, f in e.items()} for e in evaluated] == [
      {"ip1": 1.0, "ip2": 1.0, "ip3": 1.0}, {"ip1": 0.01, "ip2": 1.0, "ip3": 1.0},
      {"ip1": 1.0, "ip2": 1.0, "ip3": 1.0}, {"ip1": 1.0, "ip2": 1.0, "ip3": 0.01}]
