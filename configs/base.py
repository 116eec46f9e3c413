"""Every field a dc_jax run reads, with its default and a one-line comment each: dc_jax/defaults.py.

Experiments start from `base.get_config()`, override a few fields and `base.lock` the result.
"""

from dc_jax.defaults import get_config, lock

__all__ = ["get_config", "lock"]
