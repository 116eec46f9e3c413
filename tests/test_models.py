"""Shapes and parameter counts of the paper's and the original's networks."""

import chex
import jax
import jax.numpy as jnp
import pytest

from configs import base, lenet5, lenet300, vgg19
from dc_jax import models, train
from dc_jax.errors import ConfigError


def _abstract_variables(model, image_shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, *image_shape)))


@pytest.mark.parametrize("config_module, expected", [
    (vgg19, 38_958_922),  # The PyTorch original's VGG19-BN: "about 38.9M".
    (lenet300, 266_610),  # 235.2K + 30K + 1K weights, plus biases.
    (lenet5, 431_080),  # Han et al.: 431K.
])
def test_parameter_counts_match_the_papers(config_module, expected):
  config = config_module.get_config()
  model = models.create_model(config.model, 10)
  variables = _abstract_variables(model, models.INPUT_SHAPES[config.model.name])
  assert train.count_params(variables["params"]) == expected


def test_lenet_layers_carry_the_papers_names():
  model = models.create_model(lenet5.get_config().model, 10)
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
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x, train=False)
  chex.assert_shape(logits, (4, 10))
  chex.assert_tree_all_finite(logits)


def test_unknown_model_name_is_a_config_error():
  config = base.get_config().model
  config.name = "resnet"
  with pytest.raises(ConfigError, match="model.name='resnet'"):
    models.create_model(config, 10)


def test_unknown_vgg_depth_is_a_config_error():
  with pytest.raises(ConfigError, match="model.depth=12"):
    _abstract_variables(models.VGG(depth=12), (32, 32, 3))
