"""The stages end to end on a small synthetic MNIST written to disk: results, resumption, early errors."""

import copy
import json
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import dc_jax
from configs import lenet300, tiny
from dc_jax import codec, data, experiment, flops, loading, models, pipeline, provenance, prune, share, train
from dc_jax.models import vgg
from dc_jax.errors import ConfigError, DataError
from tests.conftest import synthetic_dataset


@pytest.fixture
def small_config(tmp_path):
  """LeNet-300-100 on a synthetic .npz: baseline, then 2 pruning rounds to the paper's per-layer fractions."""
  dataset = synthetic_dataset("mnist", n_train=256, n_test=100)
  path = tmp_path / "mnist.npz"
  np.savez(path, x_train=dataset.train_images[..., 0], y_train=dataset.train_labels,
           x_test=dataset.test_images[..., 0], y_test=dataset.test_labels)
  config = lenet300.get_config()
  config.data.path = str(path)
  config.train.epochs = 2
  config.train.batch_size = 32
  config.train.eval_batch_size = 50
  config.prune.rounds = 2
  config.prune.epochs = 1
  config.share.bits = 4
  config.share.epochs = 1
  config.share.sweep = ()
  return config


def _lines(path):
  return path.read_text().count("\n")


def test_stages_meet_their_targets_and_resume_without_retraining(small_config, tmp_path):
  workdir = tmp_path / "run"
  results = pipeline.run(small_config, workdir)
  pruned = results["stages"]["pruned"]
  assert {row["layer"]: row["kept"] for row in pruned["layers"]} == {
      "ip1/kernel": round(0.07 * 235_200), "ip2/kernel": round(0.09 * 30_000), "ip3/kernel": 250}
  assert pruned["kept_fraction"] == pytest.approx(19_414 / 266_200)
  assert [r["round"] for r in pruned["rounds"]] == [1, 2]
  assert pruned["rounds"][0]["kept_fraction"] > pruned["rounds"][1]["kept_fraction"]
  assert json.loads((workdir / "results.json").read_text()) == results
  assert all(entry["seconds"] > 0 for entry in results["stages"].values())

  # The last round's checkpoint holds the masks, and pruned weights at exactly 0.
  manager = train.checkpoint_manager(workdir / "pruned" / "round_1")
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  kernel = np.asarray(restored["params"]["ip1"]["kernel"])
  mask = np.asarray(restored["opt_state"]["masks"]["ip1"]["kernel"])
  assert mask.sum() == round(0.07 * 235_200)
  assert np.all(kernel[~mask] == 0.0) and np.count_nonzero(kernel[mask]) == mask.sum()

  # Rerunning the same command restores every stage instead of training again.
  metrics_lines = _lines(workdir / "metrics.jsonl")
  again = pipeline.run(small_config, workdir)
  assert _lines(workdir / "metrics.jsonl") == metrics_lines
  assert again["stages"]["pruned"]["layers"] == pruned["layers"]
  assert again["stages"]["pruned"]["test_accuracy"] == pruned["test_accuracy"]
  # The training time of the first run is kept; the restore's is apart.
  without_time = lambda entry: {key: value for key, value in entry.items() if key != "restore_seconds"}
  assert without_time(again["stages"]["shared"]) == results["stages"]["shared"]


def test_shared_stage_clusters_the_pruned_weights_and_fine_tunes_only_codebooks(small_config, tmp_path):
  workdir = tmp_path / "run"
  shared = pipeline.run(small_config, workdir)["stages"]["shared"]
  assert [(r["layer"], r["k"], r["clusters"]) for r in shared["layers"]] == [
      ("ip1/kernel", 16, 16), ("ip2/kernel", 16, 16), ("ip3/kernel", 16, 16)]
  assert [r["kept"] for r in shared["layers"]] == [round(0.07 * 235_200), round(0.09 * 30_000), 250]
  assert 0.0 <= shared["test_accuracy_before_finetune"] <= 1.0 and 0.0 <= shared["test_accuracy"] <= 1.0

  # The fine-tuned checkpoint: 16 values per kernel, the pruning masks and zeros intact.
  pruned = train.checkpoint_manager(workdir / "pruned" / "round_1")
  masks = pruned.restore(pruned.latest_step(), args=ocp.args.StandardRestore())["opt_state"]["masks"]
  manager = train.checkpoint_manager(workdir / "shared")
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  kernel = restored["frozen"]["ip1"]["kernel"]
  np.testing.assert_array_equal(kernel["mask"], masks["ip1"]["kernel"])
  codebook = np.asarray(restored["params"]["ip1"]["kernel"])
  assert codebook.shape == (16,) and np.all(np.diff(codebook) != 0)
  assert np.all(np.asarray(kernel["indices"])[~np.asarray(kernel["mask"])] == 0)

  # Fine-tuning moved the codebooks away from k-means' centroids and left the indices as k-means set them.
  pruned_params = pruned.restore(pruned.latest_step(), args=ocp.args.StandardRestore())["params"]
  clustered, _ = share.quantize(pruned_params, masks, experiment.sharing_plan(small_config.share, small_config.seed))
  written = codec.read(workdir / pipeline.MODEL_FILE)["params"]
  for name in ("ip1", "ip2", "ip3"):
    tuned = np.asarray(restored["params"][name]["kernel"])
    assert np.abs(tuned - clustered[name]["kernel"].codebook).max() > 1e-6, name
    np.testing.assert_array_equal(restored["frozen"][name]["kernel"]["indices"], clustered[name]["kernel"].indices)
    # The file holds the fine-tuned codebooks, not the clustered ones.
    np.testing.assert_array_equal(written[name]["kernel"].codebook, tuned)
    np.testing.assert_array_equal(written[name]["kernel"].indices, clustered[name]["kernel"].indices)


def test_a_codebook_per_channel_is_encoded_read_back_and_evaluated_from_the_file(small_config, tmp_path):
  small_config.share.granularity = "channel"
  workdir = tmp_path / "run"
  stages = pipeline.run(small_config, workdir)["stages"]
  assert [(r["layer"], r["codebooks"]) for r in stages["shared"]["layers"]] == [
      ("ip1/kernel", 300), ("ip2/kernel", 100), ("ip3/kernel", 10)]
  path = workdir / pipeline.MODEL_FILE
  assert codec._header(codec._Reader(path.read_bytes(), "h"), path)[0] == codec.GROUPED_VERSION
  written = codec.read(path)["params"]
  for name, channels in (("ip1", 300), ("ip2", 100), ("ip3", 10)):
    kernel = written[name]["kernel"]
    assert kernel.group_size == 1 and kernel.codebook.shape[0] == channels
    assert np.all(np.asarray(kernel.materialize())[~kernel.mask] == 0.0)
  assert [r["codebook_bytes"] for r in stages["encoded"]["layers"]] == [4 * 300 * 16, 4 * 100 * 16, 4 * 10 * 16]
  # Evaluated from the file: the fine-tuned model's accuracy, as the file holds it bit for bit.
  assert stages["encoded"]["test_accuracy"] == stages["shared"]["test_accuracy"]


def test_a_granularity_per_layer_is_encoded_read_back_and_evaluated_from_the_file(small_config, tmp_path):
  small_config.share.layer_granularity = (("ip1.*", "channel"), ("ip3.*", "group"))
  small_config.share.group_size = 4  # ip3's 10 channels: 4 + 4 + 2.
  workdir = tmp_path / "run"
  stages = pipeline.run(small_config, workdir)["stages"]
  assert [(r["layer"], r["codebooks"]) for r in stages["shared"]["layers"]] == [
      ("ip1/kernel", 300), ("ip2/kernel", 1), ("ip3/kernel", 3)]
  written = codec.read(workdir / pipeline.MODEL_FILE)["params"]
  assert [(written[name]["kernel"].group_size, written[name]["kernel"].codebook.shape) for name in ("ip1", "ip2", "ip3")
          ] == [(1, (300, 16)), (0, (16,)), (4, (3, 16))]
  assert stages["encoded"]["test_accuracy"] == stages["shared"]["test_accuracy"]
  # Stage shared and after depend on it, and a record from before the field had it at its default: ().
  fields = provenance.stage_fields(small_config, "shared")
  assert fields["share.layer_granularity"] == [["ip1.*", "channel"], ["ip3.*", "group"]]
  assert "share.layer_granularity" not in provenance.stage_fields(small_config, "pruned")
  assert "share.layer_granularity" in provenance.stage_fields(small_config, "sweep k=4")
  default = provenance.stage_fields(lenet300.get_config(), "shared")
  old = {name: value for name, value in default.items() if name != "share.layer_granularity"}
  assert provenance.changes(old, default, default) == {}
  assert provenance.changes(old, fields, default)["share.layer_granularity"] == ([], fields["share.layer_granularity"])


def test_vectors_are_encoded_read_back_and_evaluated_from_the_file(small_config, tmp_path):
  small_config.share.vector_size, small_config.share.init = 4, "kmeans++"
  workdir = tmp_path / "run"
  stages = pipeline.run(small_config, workdir)["stages"]
  path = workdir / pipeline.MODEL_FILE
  assert codec._header(codec._Reader(path.read_bytes(), "h"), path)[0] == codec.VECTOR_VERSION
  written = codec.read(path)["params"]
  for name, (neurons, vectors) in (("ip1", (300, 196)), ("ip2", (100, 75)), ("ip3", (10, 25))):
    kernel = written[name]["kernel"]
    assert kernel.vector_size == 4 and kernel.indices.shape == (neurons, vectors) and kernel.codebook.shape[1] == 4
  assert [r["vector_size"] for r in stages["encoded"]["layers"]] == [4, 4, 4]
  assert stages["encoded"]["test_accuracy"] == stages["shared"]["test_accuracy"]


def test_encoded_stage_file_decodes_to_the_shared_model_and_scores_the_same(small_config, tmp_path):
  workdir = tmp_path / "run"
  stages = pipeline.run(small_config, workdir)["stages"]
  encoded, path = stages["encoded"], workdir / pipeline.MODEL_FILE
  assert encoded["file_bytes"] == path.stat().st_size
  assert encoded["dense_bytes"] == 4 * 266_610
  assert encoded["compression_ratio"] == pytest.approx(encoded["dense_bytes"] / encoded["file_bytes"])
  assert [r["layer"] for r in encoded["layers"]] == ["params/ip1/kernel", "params/ip2/kernel", "params/ip3/kernel"]
  assert encoded["test_accuracy"] == stages["shared"]["test_accuracy"]
  assert pipeline.evaluate_file(small_config, path)["accuracy"] == encoded["test_accuracy"]
  assert not list(workdir.glob(".*.tmp"))

  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match="CRC32 mismatch"):
    pipeline.evaluate_file(small_config, path)


def test_evaluating_a_file_of_another_model_names_the_first_mismatch(small_config, tmp_path):
  small_config.stages = ("baseline",)
  pipeline.run(small_config, tmp_path / "run")
  manager = train.checkpoint_manager(tmp_path / "run" / "baseline")
  params = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())["params"]
  codec.write(tmp_path / "lenet300.dcz", {"params": params})
  small_config.model.name = "lenet5"
  with pytest.raises(DataError, match="conv1/bias is missing in the file"):
    pipeline.evaluate_file(small_config, tmp_path / "lenet300.dcz")


def test_sweep_sensitivity_and_report_in_one_run(small_config, tmp_path):
  small_config.share.sweep = (4, 16)  # share.bits = 4: k = 16 is the run's own sharing, reused.
  small_config.sensitivity.enabled = True
  small_config.sensitivity.apply = True
  small_config.sensitivity.fractions = (0.5, 0.2)
  workdir = tmp_path / "run"
  results = pipeline.run(small_config, workdir, command="python launch.py --config configs/lenet300.py")
  sweep = results["sweep"]
  assert [(p["k"], p["file"]) for p in sweep.values()] == [(4, "model_k4.dcz"), (16, "model.dcz")]
  assert sweep["k=4"]["file_bytes"] == (workdir / "model_k4.dcz").stat().st_size < sweep["k=16"]["file_bytes"]
  assert sweep["k=16"]["test_accuracy"] == results["stages"]["encoded"]["test_accuracy"]
  assert sweep["k=16"]["seconds"] == results["stages"]["shared"]["seconds"] + results["stages"]["encoded"]["seconds"]
  assert sweep["k=4"]["seconds"] > 0

  kept = results["sensitivity"]["kept_fractions"]
  assert set(kept) == {"ip1/kernel", "ip2/kernel", "ip3/kernel"} and set(kept.values()) <= {0.5, 0.2, 1.0}
  for row in results["stages"]["pruned"]["layers"]:
    assert row["kept_fraction"] == pytest.approx(kept[row["layer"]], abs=1e-3)

  text = (workdir / "report.md").read_text()
  assert "`python launch.py --config configs/lenet300.py`" in text and "## Shared at each k" in text
  links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
  assert {"figures/sweep.png", "figures/sensitivity.png", "figures/pareto.png"} <= set(links) and len(links) == 7
  assert all((workdir / link).read_bytes().startswith(b"\x89PNG") for link in links)


def test_start_from_restores_a_trained_baseline_instead_of_training(small_config, tmp_path):
  small_config.stages = ("baseline",)
  first = pipeline.run(small_config, tmp_path / "first")["stages"]["baseline"]
  small_config.stages = ("baseline", "pruned")
  small_config.start_from = str(tmp_path / "first")
  second = pipeline.run(small_config, tmp_path / "second")["stages"]
  assert second["baseline"]["test_accuracy"] == first["test_accuracy"]
  assert second["baseline"]["start_from"] == str(tmp_path / "first")
  assert not (tmp_path / "second" / "baseline").exists() and "pruned" in second


def test_sharing_plan_takes_layer_bits_then_bits_then_k():
  config = lenet300.get_config().share
  assert experiment.sharing_plan(config).k == 64  # bits = 6.
  config.bits = 0
  assert experiment.sharing_plan(config).k == 13
  config.bits = 6
  config.layer_bits = (("conv.*", 8),)
  plan = experiment.sharing_plan(config)
  assert (plan.clusters("conv1/kernel"), plan.clusters("ip1/kernel")) == (256, 64)


@pytest.mark.parametrize("field, value, message", [
    ("prune.kept_fraction", 1.5, "prune.kept_fraction=1.5"),
    ("prune.rounds", 0, "prune.rounds=0"),
    ("prune.criterion", "random", "prune.criterion='random'"),
    ("prune.patterns", ("conv9/kernel",), "prune.patterns: pattern 'conv9/kernel' matches no parameter"),
    ("stages", ("pruned",), "stages=('pruned',)"),
    ("share.init", "uniform", "share.init='uniform'"),
    ("share.patterns", ("ip9/kernel",), "share.patterns: pattern 'ip9/kernel' matches no parameter"),
    ("codec.index_bits", 17, "codec.index_bits=17"),
    ("share.bits", 17, "share.bits=17"),
    ("start_from", "/nonexistent", "start_from='/nonexistent' holds no checkpoint"),
    ("share.sweep", (1,), "share.sweep=(1,); valid: numbers of clusters in 2..65536"),
    ("sensitivity.fractions", (0.5, 0.0), "sensitivity.fractions=(0.5, 0.0); valid: kept fractions in (0, 1]"),
    ("share.bits", -1, "share.bits=-1"),
    ("share.layer_bits", (("ip1.*", 0),), "share.layer_bits['ip1.*']=0"),
    ("share.method", "kmeans", "share.method='kmeans' is not valid; valid: paper, dkm"),
    ("share.dkm_iterations", 0, "share.dkm_iterations=0 is not valid; valid: an integer >= 1"),
    ("share.dkm_temperature", -1.0, "share.dkm_temperature=-1.0 is not valid; valid: a number > 0"),
    ("share.dkm_temperature", 0.5, "share.dkm_temperature=0.5 has no effect: share.method='paper' has no soft"),
    ("channels.flops_fraction", 0.5, "channels.flops_fraction=0.5 removes channels by their BatchNorm scales; "
                                     "model.name='lenet300_100' has none; valid: 1.0, or model.name=vgg"),
    ("channels.flops_fraction", 1.5, "channels.flops_fraction=1.5 is not valid; valid: a number > 0 and <= 1"),
    ("channels.flops_fraction", 0.0, "channels.flops_fraction=0.0 is not valid; valid: a number > 0 and <= 1"),
    ("channels.multiple", 0, "channels.multiple=0 is not valid; valid: an integer >= 1"),
    ("channels.scope", "net", "channels.scope='net' is not valid; valid: global, layer"),
    ("channels.epochs", 3, "channels.epochs=3 has no effect: channels.flops_fraction=1.0 removes no channels"),
    ("stages", ("baseline", "slimmed"), "stages=('baseline', 'slimmed') names slimmed; channels.flops_fraction=1.0 "
                                        "removes no channels"),
])
def test_bad_config_fails_before_any_training(small_config, tmp_path, field, value, message):
  section, _, name = field.rpartition(".")
  (small_config[section] if section else small_config)[name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    pipeline.run(small_config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_pruning_plan_reads_per_layer_overrides_first_match_wins():
  config = lenet300.get_config().prune
  plan = experiment.pruning_plan(config)
  assert plan.kept_fraction == [("ip2/kernel", 0.09), ("ip3/kernel", 0.25), (".*", 0.07)]
  params = {"ip1": {"kernel": np.ones((10, 10))}, "ip3": {"kernel": np.ones((10, 10))}}
  masks = plan.prune(jax.tree.map(np.asarray, params), None, plan.rounds - 1)
  assert int(masks["ip1"]["kernel"].sum()) == round(0.07 * 100)
  assert int(masks["ip3"]["kernel"].sum()) == 25
  assert prune.report(masks)[1]["kept"] == 7 + 25


def test_float16_raw_leaves_redo_only_the_encoding_and_score_from_the_smaller_file(small_config, tmp_path):
  workdir = tmp_path / "run"
  before = pipeline.run(small_config, workdir)["stages"]
  small_config.codec.raw_dtype = "float16"
  with pytest.raises(ConfigError, match='codec.raw_dtype "float32" -> "float16"'):
    pipeline.run(small_config, workdir)
  small_config.redo_changed = True
  after = pipeline.run(small_config, workdir)["stages"]
  after["shared"].pop("restore_seconds")
  assert after["shared"] == before["shared"]  # Restored: only the file changed.
  biases = 300 + 100 + 10
  assert after["encoded"]["file_bytes"] == before["encoded"]["file_bytes"] - 2 * biases
  assert after["encoded"]["dense_bytes"] == before["encoded"]["dense_bytes"]
  params = codec.read(workdir / pipeline.MODEL_FILE)["params"]
  assert {params[name]["bias"].dtype for name in ("ip1", "ip2", "ip3")} == {np.dtype(np.float16)}
  assert abs(after["encoded"]["test_accuracy"] - before["encoded"]["test_accuracy"]) <= 0.02
  assert pipeline.evaluate_file(small_config, workdir / pipeline.MODEL_FILE)["accuracy"] == (
      after["encoded"]["test_accuracy"])


def test_dkm_redoes_only_sharing_and_encodes_a_file_that_reads_back_and_scores_the_same(small_config, tmp_path):
  workdir = tmp_path / "run"
  before = pipeline.run(small_config, workdir)["stages"]
  small_config.share.method = "dkm"
  small_config.share.dkm_iterations = 3
  assert provenance.stage_fields(small_config, "shared")["share.dkm_iterations"] == 3
  with pytest.raises(ConfigError, match='share.method "paper" -> "dkm"'):
    pipeline.run(small_config, workdir)
  small_config.redo_changed = True
  after = pipeline.run(small_config, workdir)["stages"]
  assert after["pruned"]["test_accuracy"] == before["pruned"]["test_accuracy"]
  assert after["shared"]["method"] == "dkm" and before["shared"]["method"] == "paper"
  assert after["shared"]["test_accuracy_before_finetune"] == before["shared"]["test_accuracy_before_finetune"]
  path = workdir / pipeline.MODEL_FILE
  assert after["encoded"]["file_bytes"] == path.stat().st_size
  assert after["encoded"]["test_accuracy"] == after["shared"]["test_accuracy"]
  assert pipeline.evaluate_file(small_config, path)["accuracy"] == after["encoded"]["test_accuracy"]
  kernel = codec.read(path)["params"]["ip1"]["kernel"]
  assert share.is_shared(kernel) and kernel.codebook.shape == (16,)

  # A rerun restores the fine-tuned weights instead of training again, and snaps them the same.
  lines = _lines(workdir / "metrics.jsonl")
  small_config.redo_changed = False
  again = pipeline.run(small_config, workdir)["stages"]
  assert _lines(workdir / "metrics.jsonl") == lines
  assert again["encoded"]["file_bytes"] == after["encoded"]["file_bytes"]
  assert again["shared"]["test_accuracy"] == after["shared"]["test_accuracy"]


# Stage slimmed: channel pruning of a tiny VGG11 (configs/tiny.py) on a synthetic CIFAR-10, every stage after it.

def _tiny_channel_config(root):
  """configs/tiny.py at half its FLOPs by channels, one epoch a stage, a sweep point: about 2 minutes on 2 cores."""
  dataset = synthetic_dataset("cifar10", n_train=64, n_test=64)
  path = root / "cifar10.npz"  # The name data.load("cifar10") finds in $DC_JAX_DATA_DIR.
  np.savez(path, x_train=dataset.train_images, y_train=dataset.train_labels, x_test=dataset.test_images,
           y_test=dataset.test_labels)
  config = tiny.get_config()
  config.data.path = str(path)
  config.train.epochs = 1
  config.prune.rounds = 1
  config.share.sweep = (4,)
  config.channels.flops_fraction = 0.5
  config.channels.epochs = 1
  return config


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
  """One straight run of every stage with channels removed; tests read it, or work on copies."""
  root = tmp_path_factory.mktemp("channels")
  config = _tiny_channel_config(root)
  return config, root / "run", pipeline.run(config, root / "run", command="python launch.py --config configs/tiny.py")


def test_channel_stage_runs_between_baseline_and_pruning_without_being_named_in_stages(channel_run):
  config, _, results = channel_run
  assert tuple(config.stages) == ("baseline", "pruned", "shared", "encoded")
  assert list(results["stages"]) == ["baseline", "slimmed", "pruned", "shared", "encoded"]
  assert experiment.run_stages(("baseline",), True) == ("baseline",)  # A prefix keeps its meaning.
  assert experiment.run_stages(("baseline", "slimmed"), True) == ("baseline", "slimmed")


def test_channel_stage_file_holds_the_smaller_vgg_and_scores_what_the_pipeline_reported(channel_run, monkeypatch):
  config, workdir, results = channel_run
  slimmed, encoded = results["stages"]["slimmed"], results["stages"]["encoded"]
  channels = slimmed["channels"]
  assert sum(channels) < sum(slimmed["channels_before"]) == sum(vgg.conv_channels(11, 1 / 16))
  for path, entry in ((workdir / pipeline.MODEL_FILE, encoded), (workdir / "model_k4.dcz", results["sweep"]["k=4"])):
    described = loading.metadata(path)
    assert described["model"]["channels"] == channels and described["model"]["width"] == 1.0
    kernels = share.materialize(codec.read(path)["params"])
    assert [kernels[name]["kernel"].shape[-1] for name in vgg.conv_names(11)] == channels
    # With no config, as launch.py --evaluate FILE runs: the metadata's model on the data it names.
    monkeypatch.setenv(data.DATA_DIR_ENV, str(workdir.parent))
    assert pipeline.evaluate_file(None, path, eval_batch_size=32)["accuracy"] == entry["test_accuracy"]
    # With the run's config, whose model.channels is () : the channels are the file's.
    assert pipeline.evaluate_file(config, path)["accuracy"] == entry["test_accuracy"]
    assert entry["compression_ratio_original"] == pytest.approx(
        results["stages"]["baseline"]["size_bytes"] / path.stat().st_size)
  # dc_jax.load: a predictor of the smaller VGG, as accurate on the test images as the pipeline said.
  dataset = data.load("cifar10", config.data.path)
  predict = dc_jax.load(workdir / pipeline.MODEL_FILE)
  accuracy = np.mean(np.argmax(predict(dataset.test_images), -1) == dataset.test_labels)
  assert accuracy == pytest.approx(encoded["test_accuracy"], abs=1e-9)


def test_channel_stage_flops_and_params_are_flops_count_of_the_two_models(channel_run):
  config, workdir, results = channel_run
  slimmed = results["stages"]["slimmed"]
  full = models.create_model(num_classes=10, **config.model)
  small = models.create_model(num_classes=10, **{**config.model, "width": 1.0, "channels": slimmed["channels"]})
  (_, before), (_, after) = flops.count(full, (32, 32, 3)), flops.count(small, (32, 32, 3))
  assert (slimmed["flops"], slimmed["params"]) == (before["flops"], before["params"])
  assert (slimmed["flops_after"], slimmed["params_after"]) == (after["flops"], after["params"])
  assert results["stages"]["baseline"]["flops"] == before["flops"] and after["flops"] <= 0.5 * before["flops"]
  assert slimmed["compression_ratio"] == pytest.approx(results["stages"]["baseline"]["size_bytes"]
                                                       / slimmed["size_bytes"])
  # The stage's checkpoint holds the smaller VGG; pruning counted its weights.
  manager = train.checkpoint_manager(workdir / "slimmed")
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  assert [restored["params"][name]["kernel"].shape[-1] for name in vgg.conv_names(11)] == slimmed["channels"]
  assert [restored["batch_stats"][f"bn{name[4:]}"]["var"].shape[0] for name in vgg.conv_names(11)] == \
      slimmed["channels"]
  report = (workdir / "report.md").read_text()
  assert "## Channels removed (stage slimmed)" in report and f"| channels removed | {sum(slimmed['channels'])} |" in report
  assert "smaller than the original dense float32 model" in report


def test_a_changed_channel_setting_stops_the_rerun_naming_it_and_redo_deletes_slimmed_and_what_follows(channel_run,
                                                                                                      tmp_path):
  config, workdir, _ = channel_run
  changed = copy.deepcopy(config)
  changed.channels.scope = "layer"
  with pytest.raises(ConfigError, match=re.escape(
      'channels.scope "global" -> "layer" (stages slimmed, pruned, shared, encoded, sweep k=4)')):
    pipeline.run(changed, workdir)
  copied = tmp_path / "run"
  shutil.copytree(workdir, copied)
  assert pipeline.discard(copied, ["slimmed"]) == ["slimmed", "pruned", "shared", "encoded", "sweep k=4"]
  assert (copied / "baseline").is_dir() and not any(
      (copied / name).exists() for name in ("slimmed", "pruned", "shared", "model.dcz", "shared_k4", "model_k4.dcz"))
  assert list(json.loads((copied / "results.json").read_text())["stages"]) == ["baseline"]
  recorded = provenance.load(copied)
  assert list(recorded) == ["baseline"] and "channels.scope" not in recorded["baseline"]


def test_channel_settings_are_dependencies_of_slimmed_and_what_follows_only_while_it_runs():
  config = tiny.get_config()
  assert "channels.flops_fraction" not in provenance.stage_fields(config, "baseline")
  assert provenance.stage_fields(config, "pruned")["channels.flops_fraction"] == 1.0
  assert "channels.scope" not in provenance.stage_fields(config, "pruned")  # Off: no other channels.* counts.
  config.channels.flops_fraction = 0.5
  for stage in ("slimmed", "pruned", "shared", "encoded", "sweep k=4"):
    assert {"channels.scope", "channels.multiple", "channels.epochs"} <= provenance.stage_fields(config, stage).keys()


@pytest.mark.slow
def test_a_run_stopped_after_the_channel_stage_resumes_to_the_file_of_a_straight_run(channel_run, tmp_path):
  config, workdir, results = channel_run
  first = copy.deepcopy(config)
  first.stages = ("baseline", "slimmed")
  stopped = tmp_path / "run"
  pipeline.run(first, stopped)
  checkpoints = {p: p.stat().st_mtime_ns for p in sorted((stopped / "slimmed").rglob("*")) if p.is_file()}
  resumed = pipeline.run(config, stopped)
  # Restored from its checkpoint, not trained again; what follows is the straight run's, to the byte.
  assert {p: p.stat().st_mtime_ns for p in sorted((stopped / "slimmed").rglob("*")) if p.is_file()} == checkpoints
  assert (stopped / pipeline.MODEL_FILE).read_bytes() == (workdir / pipeline.MODEL_FILE).read_bytes()
  for stage in ("slimmed", "pruned", "shared", "encoded"):
    assert resumed["stages"][stage]["test_accuracy"] == results["stages"][stage]["test_accuracy"], stage
