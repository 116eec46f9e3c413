"""LeNet-300-100 and LeNet-5 as in Han et al. (the Caffe variants), with the paper's layer names."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class LeNet300100(nn.Module):
  """784-300-100-10 fully connected net: 266,610 parameters.

  `dtype` is the compute dtype (e.g. bfloat16); parameters stay float32 and
  logits are returned as float32, so the loss and the optimizer are unchanged.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or BatchNorm: the paper's net is plain.
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    x = nn.relu(nn.Dense(300, dtype=self.dtype, name="ip1")(x))
    x = nn.relu(nn.Dense(100, dtype=self.dtype, name="ip2")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="ip3")(x).astype(jnp.float32)


class LeNet5(nn.Module):
  """Caffe's LeNet: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10 (431,080 parameters).

  `dtype` as in LeNet300100.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = nn.Conv(20, (5, 5), padding="VALID", dtype=self.dtype, name="conv1")(x.astype(self.dtype))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(50, (5, 5), padding="VALID", dtype=self.dtype, name="conv2")(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(500, dtype=self.dtype, name="ip1")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="ip2")(x).astype(jnp.float32)
