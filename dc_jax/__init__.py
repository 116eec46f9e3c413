"""dc_jax: Deep Compression (Han, Mao & Dally, ICLR 2016) in JAX/Flax.

`dc_jax.load(path, form)` turns a compressed model file into a ready `predict(images) -> logits`.
"""

from dc_jax.loading import load

__all__ = ["load"]
