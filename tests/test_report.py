"""The report: tables from results, real PNG figures of weights, report.md linking them."""

import numpy as np
import pytest

from dc_jax import codec, report
from tests.test_codec import mixed_tree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results():
  layer = {"layer": "params/ip1/kernel", "weights": 235_200, "kept_fraction": 0.07, "weight_bits_pq": 7,
           "weight_bits_pqh": 5.17, "index_bits_pq": 8, "index_bits_pqh": 3.88, "compress_rate_pq": 30.0,
           "compress_rate_pqh": 48.6}
  totals = {"weights": 235_200, "kept_fraction": 0.07, "compress_rate_pq": 30.0, "compress_rate_pqh": 48.6}
  return {
      "stages": {
          "baseline": {"test_accuracy": 0.9897, "params": 266_610, "size_bytes": 1_066_440, "seconds": 98.04},
          "pruned": {"test_accuracy": 0.9888, "kept_fraction": 0.0729, "compression_ratio": 13.7},
          "shared": {"test_accuracy": 0.9894},
          "encoded": {"test_accuracy": 0.9894, "file_bytes": 25_978, "size_bytes": 25_978, "dense_bytes": 1_066_440,
                      "compression_ratio": 41.05, "layers": [layer], "totals": totals},
      },
      "sweep": {"k=13": {"k": 13, "test_accuracy": 0.985, "file_bytes": 20_000, "compression_ratio": 53.3},
                "k=4": {"k": 4, "test_accuracy": 0.95, "file_bytes": 15_000, "compression_ratio": 71.1}},
  }


def test_stage_table_gives_error_size_ratio_and_time_of_each_stage():
  table = report.stage_table(_results())
  assert "| baseline | 98.97% | 1.03% |  | 1,066,440 B |  | 98.0 s |" in table
  assert "| shared | 98.94% | 1.06% |  |  |  |  |" in table  # No "seconds": results.json from before they were kept.
  assert "| pruned | 98.88% | 1.12% | 7.29% |  | 13.7x |" in table
  assert "| encoded | 98.94% | 1.06% |  | 25,978 B | 41.0x |" in table


def test_sweep_table_has_a_column_per_k_and_the_originals_row_for_vgg():
  table = report.sweep_table(_results(), with_original=True)
  assert "| | Original | Pruned | k=4 | k=13 |" in table
  assert "| this run, top-1 | 98.97% | 98.88% | 95.00% | 98.50% |" in table
  assert "| this run, smaller than float32 |  | 13.7x | 71.1x | 53.3x |" in table
  assert "| the PyTorch original (VGG19-BN, CIFAR-10) | 92.22% | 92.18% | 90.93% | 92.23% |" in table
  assert "PyTorch original" not in report.sweep_table(_results(), with_original=False)


def test_paper_table_1_puts_the_papers_row_beside_ours():
  table = report.paper_table_1(_results(), "lenet300_100")
  assert "| LeNet-300-100, Han et al. 2016 | 1.64% | 1,070 KB | 1.58% | 27 KB | 40x |" in table
  assert "| LeNet-300-100, this run | 1.03% | 1,066 KB | 1.06% | 26.0 KB | 41.0x |" in table


def test_layer_table_has_the_papers_columns():
  encoded = _results()["stages"]["encoded"]
  table = report.layer_table(encoded["layers"], encoded["totals"])
  assert "weight bits (P+Q+H)" in table and "index bits (P+Q+H)" in table
  assert "| params/ip1/kernel | 235,200 | 7.00% | 7 | 5.17 | 8 | 3.88 | 30.0x | 48.6x |  |" in table  # Older results.
  grouped = [{**encoded["layers"][0], "clusters": 16, "codebooks": 300, "codebook_bytes": 19_200}]
  assert "| 30.0x | 48.6x | 300 x 16 (19,200) |" in report.layer_table(grouped, encoded["totals"])


def test_figures_are_png_images_of_the_weights(tmp_path):
  rng = np.random.default_rng(0)
  dense = rng.standard_normal((50, 40)).astype(np.float32)
  mask = np.abs(dense) > 1.0
  codebook = np.float32([-1.5, -1.2, 1.2, 1.5])
  shared = np.where(mask, codebook[np.abs(dense[..., None] - codebook).argmin(-1)], 0.0)
  report.plot_layer(tmp_path / "w.png", "fc/kernel", dense, np.where(mask, dense, 0.0), mask, shared, codebook)
  report.plot_layer(tmp_path / "g.png", "fc/kernel", dense, np.where(mask, dense, 0.0), mask, shared,
                    np.tile(codebook, (40, 1)))  # A codebook per output channel.
  assert (tmp_path / "g.png").read_bytes().startswith(PNG_MAGIC)
  report.plot_sweep(tmp_path / "s.png", _results()["sweep"], 0.99)
  report.plot_sensitivity(tmp_path / "v.png", {"ip1/kernel": [[0.5, 0.99], [0.1, 0.9]]}, 0.99)
  report.plot_kept_fractions(tmp_path / "k.png", _results()["stages"]["encoded"]["layers"])
  for name in ("w", "s", "v", "k"):
    content = (tmp_path / f"{name}.png").read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5_000


def test_the_pareto_front_keeps_the_points_nothing_beats_on_bytes_and_accuracy():
  points = [("a", 100, 0.97), ("b", 200, 0.96), ("c", 150, 0.98), ("d", 300, 0.99), ("e", 150, 0.975)]
  assert [p[0] for p in report.pareto_front(points)] == ["a", "c", "d"]
  results = _results()
  assert sorted(report.file_points(results)) == [("k=13", 20_000, 0.985), ("k=4", 15_000, 0.95),
                                                 ("this run", 25_978, 0.9894)]
  results["sweep"]["k=13"].update(file_bytes=25_978, test_accuracy=0.9894)  # The run's own k: shown once.
  assert [p[0] for p in report.file_points(results)] == ["this run", "k=4"]


def test_the_pareto_figure_marks_the_published_points_of_both_lenets(tmp_path):
  for model_name in ("lenet300_100", "lenet5"):
    report.plot_pareto(tmp_path / f"{model_name}.png", report.file_points(_results()), 1_066_440, model_name)
    content = (tmp_path / f"{model_name}.png").read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5_000


def test_report_links_every_figure_and_holds_the_tables(tmp_path):
  path = report.write_report(tmp_path, _results(), "vgg", "python launch.py --config configs/vgg19_k13.py",
                             [("Sweep", "figures/sweep.png")])
  text = path.read_text()
  assert "`python launch.py --config configs/vgg19_k13.py`" in text
  assert "## The original's table" in text and "## Per layer (the paper's Tables 2-5)" in text
  assert "![Sweep](figures/sweep.png)" in text
  assert "Table 1" not in text  # Only the LeNets are in the paper's Table 1.


@pytest.mark.parametrize("model_name", ["lenet300_100", "lenet5"])
def test_report_of_a_lenet_has_the_papers_table_1(tmp_path, model_name):
  text = report.write_report(tmp_path, _results(), model_name, "cmd", []).read_text()
  assert "## The paper's Table 1" in text and "## Shared at each k" in text


def test_log_tables_show_every_layer_and_the_totals(tmp_path):
  summary = codec.write(tmp_path / "m.dcz", mixed_tree())
  coding = report.coding_text(summary.layers, summary.totals)
  assert all(row["layer"] in coding for row in summary.layers) and "(P+Q+H)" in coding
  assert f"file {summary.totals['file_bytes']:,} bytes" in coding
  pruning = report.pruning_text([{"layer": "ip1/kernel", "weights": 1000, "kept": 70, "kept_fraction": 0.07}],
                                {"weights": 1000, "kept": 70, "kept_fraction": 0.07, "compression_ratio": 1000 / 70})
  assert "ip1/kernel" in pruning and "7.00%" in pruning and "(14.3x)" in pruning
  sharing = report.sharing_text([{"layer": "ip1/kernel", "kept": 70, "k": 16, "clusters": 16, "iterations": 9,
                                  "inertia": 0.5}])
  assert "ip1/kernel" in sharing and "16" in sharing
