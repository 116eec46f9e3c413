"""Multi-process runs: starting `jax.distributed`, which process writes files, and barriers.

Every process runs the same program on the same data; training is SPMD over
all processes' devices (see train.py). Files that are not checkpoints are
written by process 0 alone, and the others wait at a barrier until it has.
"""

from __future__ import annotations

import jax
import ml_collections
from jax.experimental import multihost_utils

from dc_jax.errors import ConfigError


def check_config(config: ml_collections.ConfigDict) -> None:
  """`distributed.*` either names the coordinator, process count and id, or leaves all three to auto-detection."""
  if not config.enabled:
    return
  given = {"coordinator_address": config.coordinator_address != "", "num_processes": config.num_processes != 0,
           "process_id": config.process_id != -1}
  if any(given.values()) and not all(given.values()):
    missing = ", ".join(f"distributed.{name}" for name, present in given.items() if not present)
    raise ConfigError(f"{missing} not set; valid: set coordinator_address, num_processes and process_id "
                      "together, or none of them to auto-detect (Cloud TPU, SLURM)")
  if not all(given.values()):
    return
  host, _, port = config.coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(f"distributed.coordinator_address={config.coordinator_address!r}; valid: host:port")
  if config.num_processes < 1:
    raise ConfigError(f"distributed.num_processes={config.num_processes}; valid: >= 1, or 0 to auto-detect")
  if not 0 <= config.process_id < config.num_processes:
    raise ConfigError(f"distributed.process_id={config.process_id}; valid: 0..{config.num_processes - 1}")


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the processes of a multi-host run when `config.enabled`; must come before any other JAX call."""
  check_config(config)
  if not config.enabled:
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address or None,
      num_processes=config.num_processes or None,
      process_id=None if config.process_id == -1 else config.process_id,
      local_device_ids=tuple(config.local_device_ids) or None)


def is_primary() -> bool:
  """Whether this process writes the run's files (results, metrics, report, figures, the compressed model)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `name`: after process 0 writes a file that the others read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
