"""Per-layer settings: one value or (regex, value) pairs over parameter paths, the first fullmatch winning."""

import jax.numpy as jnp
import pytest
from flax import nnx

from dc_jax import rules
from dc_jax.errors import ConfigError


def test_the_first_fullmatching_pattern_gives_the_value():
  setting = [("conv1_1/kernel", 0.6), ("conv.*", 0.3), (".*", 0.1)]
  assert [rules.value_for(setting, name, "f") for name in ("conv1_1/kernel", "conv2_1/kernel", "fc1/kernel")] == [
      0.6, 0.3, 0.1]
  assert rules.value_for(0.2, "anything", "f") == 0.2 and rules.value_for("auto", "x", "f") == "auto"
  assert rules.values(setting) == [0.6, 0.3, 0.1] and rules.values(5) == [5]


def test_a_layer_no_pattern_matches_is_an_error_naming_the_field():
  with pytest.raises(ConfigError, match="codec.index_bits has no pattern matching 'fc1/kernel'"):
    rules.value_for([("conv.*", 4)], "fc1/kernel", "codec.index_bits")


def test_paths_name_the_same_weights_in_plain_and_boxed_trees():
  plain = {"layers": {"0": {"kernel": jnp.zeros(2)}}}
  assert list(rules.by_path(plain)) == ["layers/0/kernel"]
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  assert sorted(rules.by_path(state)) == ["bias", "kernel"]
