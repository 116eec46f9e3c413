"""BatchNorm folding: the same logits from 2 floats a channel, kernels untouched, a smaller deflated file."""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lenet5, tiny
from dc_jax import codec, experiment, folding, models, pipeline, prune, share
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset

MODEL = {"name": "vgg", "depth": 11, "width": 1 / 16, "classifier_widths": (32,), "dropout": 0.0}


def _trained_like_vgg(seed: int = 0):
  """A small VGG whose BatchNorm statistics, scales and conv biases are far from their initial values."""
  model = models.create_model(num_classes=10, **MODEL)
  images = jax.random.normal(jax.random.key(seed), (8, 32, 32, 3))
  variables = model.init(jax.random.key(seed + 1), images)
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    values = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "var":
      return np.exp(values)  # Positive, spread over orders of magnitude.
    return leaf + (0.5 * values if name != "kernel" else 0.0)

  return model, images, jax.tree_util.tree_map_with_path(perturb, dict(variables))


def test_folding_keeps_the_logits_and_makes_three_of_five_floats_constants():
  model, images, variables = _trained_like_vgg()
  folded = folding.fold_batch_norm(variables, models.batch_norm_pairs(MODEL), models.BATCH_NORM_EPSILON)
  np.testing.assert_allclose(model.apply(folded, images), model.apply(variables, images), rtol=1e-4, atol=1e-4)
  for conv, norm in models.batch_norm_pairs(MODEL):
    np.testing.assert_array_equal(folded["params"][conv]["kernel"], variables["params"][conv]["kernel"])
    np.testing.assert_array_equal(folded["params"][conv]["bias"], 0.0)
    np.testing.assert_array_equal(folded["batch_stats"][norm]["mean"], 0.0)
    np.testing.assert_array_equal(folded["batch_stats"][norm]["var"], 1.0)
    assert folded["params"][norm]["scale"].dtype == np.float32
  chex.assert_trees_all_equal(folded["params"]["fc1"], variables["params"]["fc1"])
  assert not np.array_equal(folded["params"]["bn1_1"]["bias"], variables["params"]["bn1_1"]["bias"])


def test_a_folded_shared_model_decodes_to_the_same_logits_from_a_smaller_deflated_file(tmp_path):
  model, images, variables = _trained_like_vgg(seed=3)
  plan = prune.Plan(kept_fraction=0.3, rounds=1)
  masks = plan.prune(variables["params"], None, 0)
  shared, _ = share.quantize(prune.apply_masks(variables["params"], masks), masks, share.Plan(k=13))
  unfolded = {"params": shared, "batch_stats": variables["batch_stats"]}
  folded = folding.fold_batch_norm(unfolded, models.batch_norm_pairs(MODEL), models.BATCH_NORM_EPSILON)
  assert folded["params"]["conv1_1"]["kernel"] is shared["conv1_1"]["kernel"]  # Codebook and indices untouched.
  sizes = {}
  for name, tree in (("unfolded", unfolded), ("folded", folded)):
    path = tmp_path / f"{name}.dcz"
    codec.write(path, codec.narrow_raw_floats(tree, "float16"), index_bits=0, deflate=True)
    sizes[name] = path.stat().st_size
    decoded = codec.read(path)
    widened = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32),
                           {"params": share.materialize(decoded["params"]), "batch_stats": decoded["batch_stats"]})
    sizes[name + " logits"] = model.apply(widened, images)
  np.testing.assert_allclose(sizes["folded logits"], sizes["unfolded logits"], rtol=0.02, atol=0.02)
  channels = sum(models.vgg.conv_channels(MODEL["depth"], MODEL["width"]))
  assert sizes["folded"] < sizes["unfolded"] - channels  # Three float16 arrays a conv, most of them gone.


def test_folding_a_model_without_batch_norm_stops_in_one_line():
  config = lenet5.get_config()
  config.codec.fold_batch_norm = True
  with pytest.raises(ConfigError, match=re.escape("codec.fold_batch_norm=True folds BatchNorm; model.name='lenet5'")):
    experiment.Experiment.from_config(config)


def test_the_encoded_stage_folds_and_scores_the_same_from_a_smaller_file(tmp_path):
  """pipeline.encode_and_evaluate with and without codec.fold_batch_norm, on one shared tiny VGG."""
  config = tiny.get_config()
  config.codec.deflate, config.codec.raw_dtype = True, "float16"
  unfolded = experiment.Experiment.from_config(config)
  folded = dataclasses.replace(unfolded, fold_batch_norm=True)
  model = models.create_model(num_classes=10, **unfolded.model)
  dataset = synthetic_dataset("cifar10", n_train=32, n_test=64)
  _, _, variables = _trained_like_vgg(seed=5)  # The same layers as tiny.py's VGG11.
  masks = prune.Plan(kept_fraction=0.3, rounds=1).prune(variables["params"], None, 0)
  shared, _ = share.quantize(prune.apply_masks(variables["params"], masks), masks, share.Plan(k=13))
  trainable, frozen = share.split(shared)
  state = share.SharedTrainState.create(apply_fn=model.apply, params=trainable, batch_stats=variables["batch_stats"],
                                        tx=optax.identity(), frozen=frozen)
  results = {name: pipeline.encode_and_evaluate(plan, dataset, model, state, tmp_path / f"{name}.dcz")
             for name, plan in (("unfolded", unfolded), ("folded", folded))}
  assert results["folded"]["test_accuracy"] == pytest.approx(results["unfolded"]["test_accuracy"], abs=1 / 64)
  assert results["folded"]["file_bytes"] < results["unfolded"]["file_bytes"]
  read = codec.read(tmp_path / "folded.dcz")["batch_stats"]
  assert all(np.all(read[norm]["mean"] == 0) for _, norm in models.batch_norm_pairs(unfolded.model))
