"""The run's report: the paper's and the original's tables as markdown, and figures of the run's own weights.

Everything here reads results (the contents of results.json) or parameter
trees and writes files; nothing trains. Figures are PNGs written next to
`report.md`, which links them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on training machines.
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from dc_jax import atomic  # noqa: E402

REPORT_FILE = "report.md"
# Han et al. 2016, Table 1: (reference error, dense KB, compressed error, compressed KB, ratio).
PAPER_TABLE_1 = {
    "lenet300_100": ("LeNet-300-100", 0.0164, 1070, 0.0158, 27, 40),
    "lenet5": ("LeNet-5", 0.0080, 1720, 0.0074, 44, 39),
}
# Published points on the LeNets: (method, compression ratio, test error). The later methods count
# non-zero weights or their own coding, not the bytes of a file, so they are marked, not compared.
PUBLISHED = {
    "lenet300_100": (("Han et al. 2016", 40, 0.0158), ("Ullrich et al. 2017, soft weight-sharing", 64, 0.0194),
                     ("Molchanov et al. 2017, sparse VD (non-zeros)", 68, 0.0192)),
    "lenet5": (("Han et al. 2016", 39, 0.0074), ("Ullrich et al. 2017, soft weight-sharing", 162, 0.0097),
               ("Molchanov et al. 2017, sparse VD (non-zeros)", 280, 0.0075)),
}
# The PyTorch original's VGG19-BN table on CIFAR-10 (top-1 %); k = 35 was not reported.
ORIGINAL_TABLE = {"Original": 92.22, "Pruned": 92.18, "k=4": 90.93, "k=9": 91.86, "k=13": 92.23}


def _percent(value: float | None) -> str:
  return "" if value is None else f"{100 * value:.2f}%"


def _ratio(value: float | None) -> str:
  return "" if value is None or not math.isfinite(value) else f"{value:.1f}x"


def _seconds(value: float | None) -> str:
  return "" if value is None else f"{value:,.1f} s"


def stage_table(results: dict[str, Any]) -> str:
  """Accuracy, error and size after each stage that ran, and the wall time it took in the run that wrote it.

  Every stage's entry uses the same names: `kept_fraction`, `size_bytes` (the
  dense float32 variables, or the file) and `compression_ratio`, where it has them.
  """
  rows = ["| stage | test accuracy | error | weights kept | size | ratio | time |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, entry in results["stages"].items():
    size = entry.get("size_bytes")
    rows.append(f"| {name} | {_percent(entry['test_accuracy'])} | {_percent(1 - entry['test_accuracy'])} | "
                f"{_percent(entry.get('kept_fraction'))} | {'' if size is None else f'{size:,} B'} | "
                f"{_ratio(entry.get('compression_ratio'))} | {_seconds(entry.get('seconds'))} |")
  return "\n".join(rows)


def sweep_table(results: dict[str, Any], with_original: bool) -> str:
  """The PyTorch original's table (Original | Pruned | Shared k=...) for this run, and the original's own row.

  Columns by k, whatever order the points were made in (a redone stage is recorded last).
  """
  stages, sweep = results["stages"], sorted(results.get("sweep", {}).values(), key=lambda entry: entry["k"])
  columns = ["Original", "Pruned", *(f"k={entry['k']}" for entry in sweep)]
  ours = [stages["baseline"]["test_accuracy"], stages["pruned"]["test_accuracy"],
          *(entry["test_accuracy"] for entry in sweep)]
  sizes = ["", _ratio(stages["pruned"]["compression_ratio"]), *(_ratio(e["compression_ratio"]) for e in sweep)]
  original = [f"{ORIGINAL_TABLE[c]:.2f}%" if c in ORIGINAL_TABLE else "" for c in columns]
  rows = [f"| | {' | '.join(columns)} |", f"| --- |{' --- |' * len(columns)}",
          f"| this run, top-1 | {' | '.join(_percent(a) for a in ours)} |",
          f"| this run, smaller than float32 | {' | '.join(sizes)} |"]
  if with_original:
    rows.append(f"| the PyTorch original (VGG19-BN, CIFAR-10) | {' | '.join(original)} |")
  return "\n".join(rows)


def channel_table(results: dict[str, Any]) -> str:
  """Stage slimmed: the dense VGG beside the smaller one (channels, parameters, FLOPs, accuracy), and the file against both."""
  stages = results["stages"]
  slimmed = stages["slimmed"]
  rows = ["| | conv channels | parameters | multiply-adds per image | test accuracy |",
          "| --- | ---: | ---: | ---: | ---: |",
          f"| dense | {sum(slimmed['channels_before']):,} | {slimmed['params']:,} | {slimmed['flops']:,} | "
          f"{_percent(stages['baseline']['test_accuracy'])} |",
          f"| channels removed | {sum(slimmed['channels']):,} | {slimmed['params_after']:,} | "
          f"{slimmed['flops_after']:,} | {_percent(slimmed['test_accuracy_before_finetune'])} |",
          f"| then fine-tuned | | | | {_percent(slimmed['test_accuracy'])} |"]
  lines = ["\n".join(rows), "",
           f"Kept {_percent(slimmed['flops_kept'])} of the FLOPs and {_percent(slimmed['params_kept'])} of the "
           f"parameters (channels.flops_fraction {slimmed['flops_fraction']:g}, scope {slimmed['scope']}, multiples "
           f"of {slimmed['multiple']}); channels per conv "
           f"{', '.join(f'{a}->{b}' for a, b in zip(slimmed['channels_before'], slimmed['channels']))}.",
           "", "The stages after slimmed prune, share and encode the smaller VGG: their ratios count against its "
           f"dense float32 variables ({slimmed['size_bytes']:,} B); slimmed's own against the original's "
           f"({stages['baseline']['size_bytes']:,} B)."]
  encoded = stages.get("encoded")
  if encoded and "compression_ratio_original" in encoded:
    lines += ["", f"The file, {encoded['file_bytes']:,} B, is {_ratio(encoded['compression_ratio_original'])} smaller "
              f"than the original dense float32 model ({encoded['original_dense_bytes']:,} B) and "
              f"{_ratio(encoded['compression_ratio'])} smaller than the smaller VGG's."]
  return "\n".join(lines)


def _codebooks(row: dict[str, Any]) -> str:
  """"rows x k (bytes)" of a layer's codebooks, "1 x k of d-vectors (bytes)"; "" for results.json from before."""
  if "clusters" not in row or "codebook_bytes" not in row:
    return ""
  vectors = f" of {row['vector_size']}-vectors" if row.get("vector_size", 1) > 1 else ""
  return f"{row.get('codebooks', 1)} x {row['clusters']}{vectors} ({row['codebook_bytes']:,})"


def layer_table(layers: Sequence[dict[str, Any]], totals: dict[str, Any]) -> str:
  """The paper's Tables 2-5: per layer weights kept, weight and index bits before and after Huffman coding.

  The compress rates count each layer's codebooks (all their rows); the last column shows them.
  """
  rows = ["| layer | #weights | weights % (P) | weight bits (P+Q) | weight bits (P+Q+H) | index bits (P+Q) | "
          "index bits (P+Q+H) | compress rate (P+Q) | compress rate (P+Q+H) | codebooks x k (bytes) |",
          "| --- |" + " ---: |" * 9]
  for r in layers:
    rows.append(f"| {r['layer']} | {r['weights']:,} | {_percent(r['kept_fraction'])} | {r['weight_bits_pq']} | "
                f"{r['weight_bits_pqh']:.2f} | {r['index_bits_pq']} | {r['index_bits_pqh']:.2f} | "
                f"{_ratio(r['compress_rate_pq'])} | {_ratio(r['compress_rate_pqh'])} | "
                f"{_codebooks(r)} |")
  rows.append(f"| total | {totals['weights']:,} | {_percent(totals['kept_fraction'])} | | | | | "
              f"{_ratio(totals['compress_rate_pq'])} | {_ratio(totals['compress_rate_pqh'])} | |")
  return "\n".join(rows)


def paper_table_1(results: dict[str, Any], model_name: str) -> str:
  """The paper's Table 1 row for this network beside ours: error and size, dense and compressed."""
  name, ref_error, ref_kb, error, kb, ratio = PAPER_TABLE_1[model_name]
  stages = results["stages"]
  encoded = stages["encoded"]
  return "\n".join([
      "| | reference error | dense size | compressed error | compressed size | ratio |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
      f"| {name}, Han et al. 2016 | {_percent(ref_error)} | {ref_kb:,} KB | {_percent(error)} | {kb} KB | {ratio}x |",
      f"| {name}, this run | {_percent(1 - stages['baseline']['test_accuracy'])} | "
      f"{encoded['dense_bytes'] / 1000:,.0f} KB | {_percent(1 - encoded['test_accuracy'])} | "
      f"{encoded['file_bytes'] / 1000:.1f} KB | {_ratio(encoded['compression_ratio'])} |",
  ])


# Plain-text tables for the log, as the run goes.


def sharing_text(layers: list[dict[str, Any]]) -> str:
  lines = [f"{'layer':<20}{'kept':>12}{'k':>6}{'used':>6}{'iterations':>12}{'inertia':>14}"]
  for row in layers:
    lines.append(f"{row['layer']:<20}{row['kept']:>12,}{row['k']:>6}{row['clusters']:>6}"
                 f"{row['iterations']:>12}{row['inertia']:>14.6g}")
  return "\n".join(lines)


def pruning_text(layers: list[dict[str, Any]], totals: dict[str, Any]) -> str:
  """The paper's "Weights% (P)" column, per layer and in total."""
  lines = [f"{'layer':<20}{'weights':>12}{'kept':>12}{'kept %':>9}"]
  for row in layers:
    lines.append(f"{row['layer']:<20}{row['weights']:>12,}{row['kept']:>12,}{row['kept_fraction']:>9.2%}")
  lines.append(f"{'total':<20}{totals['weights']:>12,}{totals['kept']:>12,}{totals['kept_fraction']:>9.2%}"
               f"  ({totals['compression_ratio']:.1f}x)")
  return "\n".join(lines)


def coding_text(layers: Sequence[dict[str, Any]], totals: dict[str, Any]) -> str:
  """The paper's Tables 2-5 for the shared layers, then the file's size against dense float32.

  Beside each Huffman column, the stream's entropy: the bound the code approaches.
  """
  head = (f"{'layer':<24}{'#weights':>11}{'kept%':>8}{'w bits':>8}{'w bits':>8}{'w':>8}{'i bits':>8}"
          f"{'i bits':>8}{'i':>8}{'rate':>9}{'rate':>9}\n{'':<43}{'(P+Q)':>8}{'(P+Q+H)':>8}{'entropy':>8}"
          f"{'(P+Q)':>8}{'(P+Q+H)':>8}{'entropy':>8}{'(P+Q)':>9}{'(P+Q+H)':>9}")
  lines = [head]
  for r in layers:
    lines.append(f"{r['layer']:<24}{r['weights']:>11,}{r['kept_fraction']:>8.1%}{r['weight_bits_pq']:>8}"
                 f"{r['weight_bits_pqh']:>8.2f}{r['weight_entropy']:>8.2f}{r['index_bits_pq']:>8}"
                 f"{r['index_bits_pqh']:>8.2f}{r['index_entropy']:>8.2f}"
                 f"{r['compress_rate_pq']:>8.1f}x{r['compress_rate_pqh']:>8.1f}x")
  t = totals
  lines.append(f"{'total':<24}{t['weights']:>11,}{t['kept_fraction']:>8.1%}{'':>48}"
               f"{t['compress_rate_pq']:>8.1f}x{t['compress_rate_pqh']:>8.1f}x")
  lines.append(f"file {t['file_bytes']:,} bytes; dense float32 {t['dense_bytes']:,} bytes: "
               f"{t['compression_ratio']:.1f}x smaller")
  return "\n".join(lines)


def _save(fig: plt.Figure, path: Path) -> None:
  """Every figure the same way: laid out, 90 dpi PNG, closed (a long run makes many)."""
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _histogram(ax: plt.Axes, values: np.ndarray, title: str, bins: np.ndarray) -> None:
  ax.hist(values, bins=bins, color="tab:blue")
  ax.set_title(title, fontsize=9)
  ax.set_yscale("log")
  ax.tick_params(labelsize=7)


def plot_layer(path: Path, name: str, dense: np.ndarray, pruned: np.ndarray, mask: np.ndarray,
               shared: np.ndarray | None, codebook: np.ndarray | None, vector_size: int = 1) -> None:
  """One layer's weights: dense, after pruning (kept weights only) and after sharing, centroids marked."""
  panels = 3 if shared is not None else 2
  fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3), sharex=True)
  bins = np.linspace(float(dense.min()), float(dense.max()), 121)
  _histogram(axes[0], dense.ravel(), f"{name}: dense ({dense.size:,})", bins)
  _histogram(axes[1], pruned[mask], f"pruned: {int(mask.sum()):,} kept ({mask.mean():.1%})", bins)
  if shared is not None:
    rows = f" in {codebook.shape[0]} codebooks" if codebook.ndim == 2 else ""
    title = (f"shared: {codebook.shape[0]} centroids of {vector_size}" if vector_size > 1
             else f"shared: {codebook.size} centroids{rows}")
    _histogram(axes[2], shared[mask], title, bins)
    for value in codebook if codebook.ndim == 1 else ():  # A codebook per channel or of vectors: no lines.
      axes[2].axvline(float(value), color="tab:red", linewidth=0.6, alpha=0.7)
  _save(fig, path)


def plot_kept_fractions(path: Path, layers: Sequence[dict[str, Any]]) -> None:
  fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(layers) + 1), 3))
  ax.bar([r["layer"].removesuffix("/kernel") for r in layers], [100 * r["kept_fraction"] for r in layers])
  ax.set_ylabel("weights kept (%)")
  ax.tick_params(axis="x", labelrotation=60, labelsize=7)
  _save(fig, path)


def plot_sweep(path: Path, sweep: dict[str, dict[str, Any]], baseline_accuracy: float) -> None:
  """Accuracy against compressed size (the paper's Fig. 6 idea): one point per k."""
  entries = sorted(sweep.values(), key=lambda e: e["file_bytes"])
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([e["file_bytes"] / 1000 for e in entries], [100 * e["test_accuracy"] for e in entries], "o-")
  for e in entries:
    ax.annotate(f"k={e['k']}", (e["file_bytes"] / 1000, 100 * e["test_accuracy"]), fontsize=8,
                textcoords="offset points", xytext=(4, -10))
  ax.axhline(100 * baseline_accuracy, color="gray", linestyle="--", linewidth=0.8, label="dense")
  shown = [100 * baseline_accuracy, *(100 * e["test_accuracy"] for e in entries)]
  pad = 0.1 * max(max(shown) - min(shown), 0.1)
  ax.set_ylim(min(shown) - pad, max(shown) + pad)
  ax.set_xlabel("compressed file (KB)")
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=8)
  _save(fig, path)


def file_points(results: dict[str, Any]) -> list[tuple[str, int, float]]:
  """(label, file bytes, test accuracy from the file) of each file the run wrote: its own, and each sweep point's."""
  encoded = results["stages"]["encoded"]
  points = [("this run", encoded["file_bytes"], encoded["test_accuracy"])]
  points += [(f"k={e['k']}", e["file_bytes"], e["test_accuracy"]) for e in results.get("sweep", {}).values()
             if e["file_bytes"] != encoded["file_bytes"] or e["test_accuracy"] != encoded["test_accuracy"]]
  return points


def pareto_front(points: Sequence[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
  """The points no other point beats on both counts (fewer bytes and at least the accuracy), smallest first."""
  front, best = [], -math.inf
  for point in sorted(points, key=lambda p: (p[1], -p[2])):
    if point[2] > best:
      front.append(point)
      best = point[2]
  return front


def plot_pareto(path: Path, points: Sequence[tuple[str, int, float]], dense_bytes: int, model_name: str) -> None:
  """Accuracy against file bytes: the run's files, their Pareto front, the published points and the paper's limit."""
  name, reference_error = PAPER_TABLE_1[model_name][:2]
  fig, ax = plt.subplots(figsize=(6, 4))
  front = pareto_front(points)
  ax.plot([p[1] / 1000 for p in front], [100 * p[2] for p in front], "-", color="C0", linewidth=1, label="Pareto front")
  ax.plot([p[1] / 1000 for p in points], [100 * p[2] for p in points], "o", color="C0",
          label="this run, from its files")
  for label, size, accuracy in points:
    ax.annotate(label, (size / 1000, 100 * accuracy), fontsize=7, textcoords="offset points", xytext=(4, 3))
  for i, (method, ratio, error) in enumerate(PUBLISHED[model_name]):
    ax.plot(dense_bytes / ratio / 1000, 100 * (1 - error), marker="s^v"[i % 3], linestyle="none", color=f"C{i + 1}",
            label=f"{method}: {ratio}x")
  ax.axhline(100 * (1 - reference_error), color="gray", linestyle="--", linewidth=0.8,
             label=f"the paper's limit ({100 * reference_error:.2f}% error)")
  ax.set_xscale("log")
  kilobytes = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
  ax.xaxis.set_major_formatter(kilobytes)
  ax.xaxis.set_minor_formatter(kilobytes)
  ax.set_xlabel("compressed file (KB, log scale)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(name, fontsize=9)
  ax.legend(fontsize=7)
  _save(fig, path)


def plot_sensitivity(path: Path, curves: dict[str, list[list[float]]], baseline_accuracy: float) -> None:
  """Han et al. 2015 Fig. 5: accuracy with one layer pruned alone, no retraining."""
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  for layer, points in curves.items():
    fractions, accuracies = zip(*points)
    ax.plot([100 * (1 - f) for f in fractions], [100 * a for a in accuracies], "o-", markersize=3,
            label=layer.removesuffix("/kernel"))
  ax.axhline(100 * baseline_accuracy, color="gray", linestyle="--", linewidth=0.8)
  ax.set_xlabel("weights pruned (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=6, ncol=2)
  _save(fig, path)


def write_report(workdir: Path, results: dict[str, Any], model_name: str, command: str,
                 figures: Sequence[tuple[str, str]]) -> Path:
  """report.md: the tables for the stages that ran and links to the figures, (title, file name) each."""
  stages = results["stages"]
  parts = [f"# dc_jax report: {model_name}", "", f"Command: `{command}`", "", "## Stages", "", stage_table(results)]
  if "slimmed" in stages:
    parts += ["", "## Channels removed (stage slimmed)", "", channel_table(results)]
  if "pruned" in stages and results.get("sweep"):
    vgg = model_name == "vgg"
    parts += ["", "## The original's table" if vgg else "## Shared at each k", "", sweep_table(results, vgg)]
  if "encoded" in stages:
    parts += ["", "## Per layer (the paper's Tables 2-5)", "",
              layer_table(stages["encoded"]["layers"], stages["encoded"]["totals"])]
    if model_name in PAPER_TABLE_1:
      parts += ["", "## The paper's Table 1", "", paper_table_1(results, model_name)]
  if results.get("sensitivity"):
    derived = results["sensitivity"]["kept_fractions"]
    parts += ["", "## Sensitivity", "", f"Tolerated drop: {_percent(results['sensitivity']['tolerated_drop'])}; "
              "derived kept fractions: " + ", ".join(f"`{layer}` {_percent(f)}" for layer, f in derived.items())]
  if figures:
    parts += ["", "## Figures", ""]
    parts += [f"### {title}\n\n![{title}]({file})\n" for title, file in figures]
  path = workdir / REPORT_FILE
  atomic.write_bytes(path, ("\n".join(parts) + "\n").encode())
  return path
