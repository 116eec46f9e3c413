"""VGG's conv implementations (XLA's convolution, im2col patches) share parameters and agree."""

import chex
import jax
import jax.numpy as jnp
import pytest

from configs import base
from dc_jax import models
from dc_jax.errors import ConfigError
from dc_jax.models import vgg


def _narrow_vgg(conv_impl):
  return models.VGG(depth=11, width=1 / 16, classifier_widths=(16,), dropout_rate=0.0, conv_impl=conv_impl)


def _loss(model, variables, x):
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return jnp.sum(jnp.sin(logits))


@pytest.mark.parametrize("spatial", [1, 2, 4, 5])
def test_patches_conv_matches_xla_conv_and_its_gradients(spatial):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (8, spatial, spatial, 32))
  kernel = jax.random.normal(keys[1], (3, 3, 32, 48)) * 0.1
  cotangent = jax.random.normal(keys[2], (8, spatial, spatial, 48))

  def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  expected, expected_vjp = jax.vjp(xla_conv, x, kernel)
  actual, actual_vjp = jax.vjp(vgg.patches_conv, x, kernel)
  chex.assert_trees_all_close(actual, expected, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(actual_vjp(cotangent), expected_vjp(cotangent), atol=1e-4, rtol=1e-4)


def test_implementations_have_identical_parameter_trees():
  x = jnp.zeros((1, 32, 32, 3))
  trees = [_narrow_vgg(impl).init(jax.random.key(0), x) for impl in ("xla", "patches", "auto")]
  for tree in trees[1:]:
    chex.assert_trees_all_equal_shapes_and_dtypes(tree, trees[0])
    chex.assert_trees_all_equal(tree, trees[0])  # Same names, so the same initial values too.
  chex.assert_shape(trees[1]["params"]["conv5_2"]["kernel"], (3, 3, 32, 32))


def test_narrow_vgg_outputs_and_gradients_agree_across_implementations():
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = _narrow_vgg("xla").init(jax.random.key(0), x)
  results = {}
  for impl in ("xla", "patches"):
    model = _narrow_vgg(impl)
    logits = model.apply(variables, x, train=False)
    grads = jax.grad(lambda params: _loss(model, {**variables, "params": params}, x))(variables["params"])
    results[impl] = (logits, grads)
  chex.assert_trees_all_close(results["patches"], results["xla"], atol=2e-4, rtol=2e-4)


def test_auto_uses_patches_on_cpu_only_for_tiny_maps_and_large_wide_ones():
  patches = "patches" if jax.default_backend() == "cpu" else "xla"
  assert vgg.resolve_conv_impl("auto", (128, 2, 2, 64)) == patches
  assert vgg.resolve_conv_impl("auto", (128, 32, 32, 64)) == patches
  assert vgg.resolve_conv_impl("auto", (128, 16, 16, 128)) == patches
  assert vgg.resolve_conv_impl("auto", (128, 32, 32, 3)) == "xla"  # The first conv, and narrow VGGs.
  assert vgg.resolve_conv_impl("auto", (128, 8, 8, 256)) == "xla"
  assert vgg.resolve_conv_impl("patches", (128, 8, 8, 256)) == "patches"
  assert vgg.resolve_conv_impl("xla", (128, 2, 2, 512)) == "xla"


def test_create_model_reads_conv_impl_with_auto_as_default():
  config = base.get_config().model
  config.name = "vgg"
  assert models.create_model(num_classes=10, **config).conv_impl == "auto"
  config.conv_impl = "patches"
  assert models.create_model(num_classes=10, **config).conv_impl == "patches"


def test_unknown_conv_impl_is_a_config_error():
  with pytest.raises(ConfigError, match="model.conv_impl='cudnn'"):
    _narrow_vgg("cudnn").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
