"""The README's own-model example runs as a user would run it, on the real MNIST."""

import os
import re
import subprocess
import sys
from pathlib import Path

from dc_jax import codec

ROOT = Path(__file__).parents[1]


def test_own_model_example_compresses_and_scores_the_same_from_its_file(shared_data_dir, tmp_path):
  out = tmp_path / "runs" / "own_model" / "mlp.dcz"  # The default: under the working folder's runs/.
  result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--epochs=1"],
                          env={**os.environ, "DC_JAX_DATA_DIR": str(shared_data_dir)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  accuracies = dict(re.findall(r"^(dense|pruned to 10%|shared, k=16): ([0-9.]+)$", result.stdout, re.M))
  assert float(accuracies["dense"]) > 0.9 and float(accuracies["shared, k=16"]) > 0.85
  from_file = re.search(r"from the file: ([0-9.]+)", result.stdout).group(1)
  assert from_file == accuracies["shared, k=16"]
  kernel = codec.read(out)["params"]["hidden"]["kernel"]
  assert kernel.codebook.size == 16 and kernel.mask.sum() == round(0.1 * kernel.mask.size)


def test_own_model_nnx_example_compresses_and_scores_the_same_from_its_file(shared_data_dir, tmp_path):
  out = tmp_path / "runs" / "own_model" / "mlp_nnx.dcz"
  result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model_nnx.py"), "--epochs=1"],
                          env={**os.environ, "DC_JAX_DATA_DIR": str(shared_data_dir)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  accuracies = dict(re.findall(r"^(dense|pruned to 10%|shared, k=16): ([0-9.]+)$", result.stdout, re.M))
  assert float(accuracies["dense"]) > 0.9 and float(accuracies["shared, k=16"]) > 0.85
  from_file = re.search(r"from the file: ([0-9.]+)", result.stdout).group(1)
  assert from_file == accuracies["shared, k=16"]
  kernel = codec.read(out)["params"]["hidden"]["kernel"]
  assert kernel.codebook.size == 16 and kernel.mask.sum() == round(0.1 * kernel.mask.size)
