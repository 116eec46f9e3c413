"""dc_jax: Deep Compression (Han, Mao & Dally, ICLR 2016) in JAX/Flax."""
