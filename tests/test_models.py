"""Shapes and parameter counts of the paper's and the original's networks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, lenet5, lenet300, vgg19
from dc_jax import models, train
from dc_jax.errors import ConfigError


def _abstract_variables(model, image_shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, *image_shape)))


def _random_variables(model, image_shape):
  """Variables of the right tree and shapes with lecun-normal kernels, without compiling Flax's init (slow on CPU)."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if "scale" in name or "var" in name else jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, image_shape))


@pytest.mark.parametrize("config_module, expected", [
    (vgg19, 38_958_922),  # The PyTorch original's VGG19-BN: "about 38.9M".
    (lenet300, 266_610),  # 235.2K + 30K + 1K weights, plus biases.
    (lenet5, 431_080),  # Han et al.: 431K.
])
def test_parameter_counts_match_the_papers(config_module, expected):
  config = config_module.get_config()
  model = models.create_model(num_classes=10, **config.model)
  variables = _abstract_variables(model, models.INPUT_SHAPES[config.model.name])
  assert train.count_params(variables["params"]) == expected


def test_lenet_layers_carry_the_papers_names():
  model = models.create_model(num_classes=10, **lenet5.get_config().model)
  variables = _abstract_variables(model, (28, 28, 1))
  chex.assert_shape(variables["params"]["conv1"]["kernel"], (5, 5, 1, 20))
  chex.assert_shape(variables["params"]["conv2"]["kernel"], (5, 5, 20, 50))
  chex.assert_shape(variables["params"]["ip1"]["kernel"], (800, 500))
  chex.assert_shape(variables["params"]["ip2"]["kernel"], (500, 10))


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_depth_counts_conv_layers_plus_three_dense(depth, convs):
  model = models.VGG(depth=depth, width=0.125)
  params = _abstract_variables(model, (32, 32, 3))["params"]
  assert sum(name.startswith("conv") for name in params) == convs
  assert sum(name.startswith("fc") for name in params) == 3


def test_vgg_width_scales_convs_and_empty_classifier_gives_linear_head():
  model = models.VGG(depth=19, width=0.25, classifier_widths=())
  variables = _abstract_variables(model, (32, 32, 3))
  chex.assert_shape(variables["params"]["conv1_1"]["kernel"], (3, 3, 3, 16))
  chex.assert_shape(variables["params"]["conv5_4"]["kernel"], (3, 3, 128, 128))
  chex.assert_shape(variables["params"]["fc1"]["kernel"], (128, 10))
  assert "fc2" not in variables["params"]
  assert "bn1_1" in variables["batch_stats"]


@pytest.mark.parametrize("model", [models.LeNet300100(), models.LeNet5(),
                                   models.VGG(depth=11, width=0.0625, classifier_widths=(32,))])
def test_models_map_a_batch_to_finite_logits(model):
  shape = (32, 32, 3) if isinstance(model, models.VGG) else (28, 28, 1)
  x = jax.random.normal(jax.random.key(1), (4, *shape))
  logits = jax.jit(model.apply)(_random_variables(model, shape), x)
  chex.assert_shape(logits, (4, 10))
  chex.assert_tree_all_finite(logits)


def test_unknown_model_name_is_a_config_error():
  config = base.get_config().model
  config.name = "resnet"
  with pytest.raises(ConfigError, match="model.name='resnet'"):
    models.create_model(num_classes=10, **config)


def test_unknown_vgg_depth_is_a_config_error():
  with pytest.raises(ConfigError, match="model.depth=12"):
    _abstract_variables(models.VGG(depth=12), (32, 32, 3))


def test_vgg_channels_set_every_conv_and_keep_the_layer_names():
  channels = (3, 5, 7, 9, 2, 4, 6, 8)
  variables = _abstract_variables(models.VGG(depth=11, channels=channels, classifier_widths=(16,)), (32, 32, 3))
  widths = [variables["params"][f"conv{b}_{i}"]["kernel"].shape[-1] for b, i in
            ((1, 1), (2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (5, 1), (5, 2))]
  assert tuple(widths) == channels
  chex.assert_shape(variables["params"]["conv2_1"]["kernel"], (3, 3, 3, 5))
  chex.assert_shape(variables["batch_stats"]["bn5_2"]["mean"], (8,))
  chex.assert_shape(variables["params"]["fc1"]["kernel"], (8, 16))


def test_vgg_channels_of_the_wrong_length_are_a_config_error():
  with pytest.raises(ConfigError, match="model.channels has 3 entries; valid: one per conv, 8 at depth 11"):
    _abstract_variables(models.VGG(depth=11, channels=(4, 4, 4)), (32, 32, 3))


def _model_pair(name: str, **fields):
  """The same network computing in float32 and in bfloat16."""
  config = base.get_config().model
  config.name = name
  config.update(fields)
  config.dtype = "bfloat16"
  low = models.create_model(num_classes=10, **config)
  config.dtype = "float32"
  return models.create_model(num_classes=10, **config), low


@pytest.mark.parametrize("name, fields", [
    ("lenet300_100", {}), ("lenet5", {}),
    ("vgg", {"depth": 11, "width": 0.0625, "classifier_widths": (32,), "conv_impl": "xla"}),
    ("vgg", {"depth": 11, "width": 0.0625, "classifier_widths": (32,), "conv_impl": "patches"}),
])
def test_bfloat16_compute_keeps_float32_parameters_and_logits(name, fields):
  full, low = _model_pair(name, **fields)
  x = jax.random.normal(jax.random.key(1), (8, *models.INPUT_SHAPES[name]))
  abstract = _abstract_variables(low, models.INPUT_SHAPES[name])
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  variables = _random_variables(full, models.INPUT_SHAPES[name])
  assert "bf16[" in str(jax.make_jaxpr(low.apply)(variables, x))  # The matmuls and convs run in bfloat16...
  assert "bf16[" not in str(jax.make_jaxpr(full.apply)(variables, x))
  low_logits, full_logits = jax.jit(low.apply)(variables, x), jax.jit(full.apply)(variables, x)
  assert low_logits.dtype == jnp.float32  # ...and the loss sees float32 logits close to float32 compute's.
  chex.assert_trees_all_close(low_logits, full_logits, atol=0.05 * float(jnp.abs(full_logits).max()))


def test_bfloat16_train_step_updates_float32_parameters_like_float32_compute():
  full, low = _model_pair("lenet300_100")
  params = _random_variables(full, (28, 28, 1))["params"]
  batch = {"image": jax.random.uniform(jax.random.key(1), (64, 28, 28, 1)),
           "label": jax.random.randint(jax.random.key(2), (64,), 0, 10)}
  tx = optax.sgd(0.1)
  states = [train.TrainState.create(apply_fn=model.apply, params=params, batch_stats={}, tx=tx)
            for model in (full, low)]
  (full_state, full_metrics), (low_state, low_metrics) = (
      train.train_step(state, batch, jax.random.key(3)) for state in states)
  chex.assert_trees_all_equal_dtypes(low_state.params, full_state.params)
  assert abs(float(low_metrics["loss"]) - float(full_metrics["loss"])) < 0.02
  updates = [jax.tree.map(jnp.subtract, state.params, start.params)
             for state, start in zip((full_state, low_state), states)]
  # Each layer's update within 10% of float32's, relative to its own size (measured: at most 3.7%, in ip1);
  # an absolute tolerance would have to exceed ip1's updates (1.7e-3 at most) and pass a frozen layer.
  for (path, full_update), low_update in zip(jax.tree_util.tree_leaves_with_path(updates[0]),
                                             jax.tree.leaves(updates[1])):
    full_update, low_update = np.asarray(full_update), np.asarray(low_update)
    assert np.linalg.norm(full_update) > 0, jax.tree_util.keystr(path)
    relative = np.linalg.norm(low_update - full_update) / np.linalg.norm(full_update)
    assert relative < 0.1, f"{jax.tree_util.keystr(path)}: bfloat16's update is {relative:.1%} off float32's"


def test_unknown_compute_dtype_is_a_config_error():
  config = base.get_config().model
  config.dtype = "float16"
  with pytest.raises(ConfigError, match="model.dtype='float16'.*bfloat16"):
    models.create_model(num_classes=10, **config)
