"""The paper's LeNet-300-100 targets on the real MNIST: minutes on 2 cores, so marked slow.

  DC_JAX_DATA_DIR=../shared/data python -m pytest -m slow
"""

import pytest

from configs import lenet300
from dc_jax import pipeline


@pytest.mark.slow
def test_lenet300_meets_the_papers_error_dense_and_pruned_to_8_percent(shared_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("DC_JAX_DATA_DIR", str(shared_data_dir))
  stages = pipeline.run(lenet300.get_config(), tmp_path / "run")["stages"]
  assert stages["baseline"]["test_accuracy"] >= 1 - 0.0164  # Han et al.'s reference: 1.64% error.
  assert stages["pruned"]["kept_fraction"] <= 0.08
  assert stages["pruned"]["test_accuracy"] >= 1 - 0.0164
