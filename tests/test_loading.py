"""dc_jax.load: a file with metadata is a ready predict on uint8 images in each form; without it, one line."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_inference import MODELS, pruned_shared

import dc_jax
from dc_jax import codec, data, inference, loading
from dc_jax.errors import DataError

MODEL_SETTINGS = {"lenet300100": {"name": "lenet300_100"}, "lenet5": {"name": "lenet5"},
                  "tiny_vgg": {"name": "vgg", "depth": 11, "width": 1 / 16, "classifier_widths": [32]}}


def dataset_like(shape, seed=0) -> data.Dataset:
  """uint8 images of `shape` with statistics of their own: what `describe` reads from a dataset."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (8, *shape), np.uint8)
  channels = shape[-1]
  return data.Dataset(name="cifar10" if channels == 3 else "mnist", train_images=images,
                      train_labels=np.zeros(8, np.int32), test_images=images, test_labels=np.zeros(8, np.int32),
                      num_classes=10, mean=np.linspace(0.2, 0.5, channels).astype(np.float32),
                      std=np.linspace(0.2, 0.3, channels).astype(np.float32))


def written(name, tmp_path, metadata=True):
  """(model, the tree written, the dataset described, the file) for one of test_inference's models."""
  model, shape, k, kept = MODELS[name]
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  tree = pruned_shared(variables, k, kept)
  dataset = dataset_like(shape)
  path = tmp_path / f"{name}.dcz"
  codec.write(path, tree, metadata=loading.describe(MODEL_SETTINGS[name], dataset) if metadata else None)
  return model, tree, dataset, path


@pytest.mark.parametrize("name", sorted(MODELS))
def test_load_takes_uint8_images_and_normalises_them_with_the_files_statistics(name, tmp_path):
  model, tree, dataset, path = written(name, tmp_path)
  images = dataset.test_images[:3]
  expected = inference.predictor(model, tree, "dense")(data.normalize(images, dataset.mean, dataset.std))
  assert float(jnp.std(expected)) > 1e-3  # Logits that differ between images: a comparison that could fail.
  for form in inference.FORMS:
    predict = dc_jax.load(path, form)
    chex.assert_trees_all_close(predict(images), expected, atol=1e-4, rtol=1e-4)
    assert predict.form == form and predict.metadata["num_classes"] == 10


def test_describe_round_trips_through_the_file(tmp_path):
  _, _, dataset, path = written("tiny_vgg", tmp_path)
  described = loading.metadata(path)
  statistics = {name: np.asarray(described.pop(name), np.float32) for name in ("mean", "std")}
  assert described == {"model": MODEL_SETTINGS["tiny_vgg"], "input_shape": [32, 32, 3], "dataset": "cifar10",
                       "num_classes": 10}
  # Each statistic as the shortest decimal of its float32: the same float32 back, in fewer bytes.
  np.testing.assert_array_equal(statistics["mean"], dataset.mean)
  np.testing.assert_array_equal(statistics["std"], dataset.std)
  assert loading.model_of({**described, **statistics}) == MODELS["tiny_vgg"][0]


def test_a_lenets_description_leaves_out_the_vgg_settings_it_ignores():
  config_model = {"name": "lenet5", "depth": 19, "width": 1.0, "channels": (), "classifier_widths": (4096, 4096),
                  "dropout": 0.5, "conv_impl": "auto", "dtype": "float32"}
  assert loading.describe(config_model, dataset_like((28, 28, 1)))["model"] == {"name": "lenet5", "dtype": "float32"}
  assert loading.describe({**config_model, "name": "vgg"}, dataset_like((32, 32, 3)))["model"]["depth"] == 19


def test_the_dense_form_holds_the_kernels_decoded_straight_to_dense(tmp_path):
  _, tree, _, path = written("lenet300100", tmp_path)
  predict = dc_jax.load(path)
  np.testing.assert_array_equal(predict.variables["params"]["ip1"]["kernel"],
                                tree["params"]["ip1"]["kernel"].materialize())


def test_a_file_without_metadata_fails_in_one_line_saying_what_to_give(tmp_path):
  _, _, _, path = written("lenet300100", tmp_path, metadata=False)
  with pytest.raises(DataError, match="holds no metadata .* --config CONFIG --evaluate") as error:
    dc_jax.load(path)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"num_classes": "10"}, "metadata field 'num_classes' is '10'; valid: a JSON int"),
    ({"mean": [0.1, 0.2]}, "are not 1 channel statistics"),
    ({"std": [0.0]}, "with std > 0"),
    ({"model": {"depth": 11}}, "metadata field 'model' has no 'name'"),
    ({"model": {"name": "resnet"}}, "builds no model: model.name='resnet' is not a model"),
    ({"model": {"name": "lenet5", "colour": 1}}, "builds no model"),
], ids=["type", "channels", "std", "no name", "unknown model", "unknown setting"])
def test_metadata_that_describes_no_model_fails_in_one_line(tmp_path, change, message):
  model, tree, dataset, path = written("lenet300100", tmp_path)
  codec.write(path, tree, metadata={**loading.describe(MODEL_SETTINGS["lenet300100"], dataset), **change})
  with pytest.raises(DataError, match=message) as error:
    dc_jax.load(path)
  assert "\n" not in str(error.value)
