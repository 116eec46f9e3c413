"""Inference from the compressed form (Deep Compression Sec. 6): a jitted `predict(images) -> logits` in three forms.

- `dense`: every SharedKernel materialised to a dense array (what decoding gave before).
- `codebook`: each SharedKernel stays on the device as its small integer codes and codebook, and is
  expanded inside the jitted forward pass. The mask is folded into the codes (code 0 is a 0.0
  codeword, code i + 1 is centroid i), so a kept weight costs one byte, or half a byte when the
  k + 1 codes fit in 4 bits. Only k = 256 (257 codes) keeps indices and a bit-packed mask apart, as do
  kernels of vectors: one code per vector of d weights, some of them kept and some pruned.
- `sparse`: pruned fully connected kernels (2-D SharedKernels) run as sparse matrix products: their kept
  weights by blocks of inputs, output by output, multiplied by compiled code (`sparse_kernels`, with
  AVX-512 gathers where the CPU has them) through `jax.pure_callback`; the rest as in `dense`. On XLA:CPU
  at batch 1, the BCSR and BCOO products of `jax.experimental.sparse` were 2-5x slower than the dense one
  at 9% kept; ours is 4.7-5.8x faster called directly and 2.8-4.1x through the callback, with a quarter
  fewer bytes a kept weight than scipy's CSR (bench/sparse_fc.py, BENCHMARKS.md).
  With `threads`, large products split their outputs over several cores, as XLA's dense one does.

All three compute the same logits to float tolerance (tests/test_inference.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dc_jax import codec, share, sparse_kernels
from dc_jax.share import SharedKernel, is_shared

FORMS = ("dense", "codebook", "sparse")
Variables = Any


@struct.dataclass
class CodebookKernel:
  """A SharedKernel as the device holds it in the `codebook` form; `expand` gives the dense kernel."""

  codebook: jax.Array  # [k + 1], 0.0 first, where the mask is folded into the codes; else [k]; a row per group.
  codes: jax.Array  # Flat uint8 (uint16 if k > 256) codes, or two 4-bit codes per byte, high nibble first.
  mask_bits: jax.Array | None  # np.packbits of the flat mask, only where it is not folded into the codes.
  shape: tuple[int, ...] = struct.field(pytree_node=False)
  nibbles: bool = struct.field(pytree_node=False, default=False)
  group_size: int = struct.field(pytree_node=False, default=0)  # SharedKernel.group_size: channels per codebook row.
  vector_size: int = struct.field(pytree_node=False, default=1)  # SharedKernel.vector_size: weights per code.

  @property
  def nbytes(self) -> int:
    return sum(int(a.nbytes) for a in (self.codebook, self.codes, self.mask_bits) if a is not None)


def _dense(kernel: SharedKernel) -> np.ndarray:
  """The dense kernel, scattering only the kept weights: 3x faster than a lookup of every weight at 7% kept."""
  codebook, indices, mask = (np.asarray(a) for a in (kernel.codebook, kernel.indices, kernel.mask))
  dense = codec.aligned_zeros(mask.size, codebook.dtype)
  kept = np.flatnonzero(mask)
  if kernel.vector_size > 1:
    dense[kept] = codebook.reshape(-1)[share.vector_slots(indices, mask.shape, kernel.vector_size).reshape(-1)[kept]]
    return dense.reshape(mask.shape)
  clusters = indices.reshape(-1)[kept].astype(np.int64)
  if kernel.group_size:
    clusters += share.row_offsets(kept, mask.shape[-1], kernel.group_size, codebook.shape[-1])
  dense[kept] = codebook.reshape(-1)[clusters]
  return dense.reshape(mask.shape)


def compact(kernel: SharedKernel, nibbles: bool | None = None) -> CodebookKernel:
  """The `codebook` form of a kernel, on the host; `nibbles=None` packs 4-bit codes whenever they fit."""
  codebook, indices, mask = (np.asarray(a) for a in (kernel.codebook, kernel.indices, kernel.mask))
  k = codebook.shape[-1]
  fold = k + 1 <= 256 and kernel.vector_size == 1
  if fold:
    codebook = np.concatenate([np.zeros((*codebook.shape[:-1], 1), codebook.dtype), codebook], axis=-1)
    # Indices are 0 where pruned, so index + mask is the folded code: one pass, no temporaries of 2 bytes a weight.
    codes = codec.aligned_zeros(indices.size, np.uint8)  # Aligned: device_put takes it without a copy.
    np.add(indices.reshape(-1).astype(np.uint8, copy=False), mask.reshape(-1).view(np.uint8), out=codes)
    mask_bits = None
  else:
    codes, mask_bits = indices.ravel(), np.packbits(mask.ravel())
  fits = fold and codebook.shape[-1] <= 16
  nibbles = fits if nibbles is None else nibbles
  if nibbles and not fits:
    raise ValueError(f"{k} clusters need {codebook.shape[-1]} codes: more than 4 bits hold; use nibbles=False")
  if nibbles:
    codes = np.concatenate([codes, np.zeros(codes.size % 2, np.uint8)])
    codes = (codes[0::2] << 4) | codes[1::2]
  return CodebookKernel(codebook, codes, mask_bits, tuple(mask.shape), bool(nibbles), kernel.group_size,
                        kernel.vector_size)


def expand(kernel: CodebookKernel) -> jax.Array:
  """The dense kernel, computed where it is needed (inside the jitted forward pass)."""
  size = int(np.prod(kernel.shape))
  codes = kernel.codes
  if kernel.nibbles:
    codes = jnp.stack([codes >> 4, codes & 15], axis=-1).reshape(-1)[:size]
  if kernel.vector_size > 1:
    neurons, _, vectors = share.vector_grid(kernel.shape, kernel.vector_size)
    slots = share.vector_slots(codes.reshape(neurons, vectors), kernel.shape, kernel.vector_size)
    values = kernel.codebook.reshape(-1)[slots.reshape(-1)]
  elif kernel.group_size:
    k = kernel.codebook.shape[-1]
    offsets = share.row_offsets(jnp.arange(size), kernel.shape[-1], kernel.group_size, k)
    values = kernel.codebook.reshape(-1)[offsets + codes.astype(jnp.int32)]
  else:
    values = kernel.codebook[codes]
  if kernel.mask_bits is not None:
    mask = jnp.unpackbits(kernel.mask_bits, count=size).astype(bool)
    values = jnp.where(mask, values, jnp.zeros((), values.dtype))
  return values.reshape(kernel.shape)


def _is_kernel(leaf: Any) -> bool:
  return isinstance(leaf, (SharedKernel, CodebookKernel))


def _expand_all(variables: Variables) -> Variables:
  return jax.tree.map(lambda leaf: expand(leaf) if isinstance(leaf, CodebookKernel) else leaf, variables,
                      is_leaf=_is_kernel)


def output_rows(kernel: SharedKernel | np.ndarray) -> sparse_kernels.OutputRows:
  """A Dense kernel [in, out] (shared or not) as its kept weights by input block, output by output (`sparse` form)."""
  return sparse_kernels.output_rows(_dense(kernel) if is_shared(kernel) else np.asarray(kernel))


def sparse_matmul(x: jax.Array, rows: sparse_kernels.OutputRows, threads: int = 1) -> jax.Array:
  """`x @ kernel` for x [batch, in] by the compiled sparse product (`sparse_kernels.matmul`) on `threads` threads.

  Callable inside jit: it runs on the host, in float32.
  """
  def host(x: np.ndarray) -> np.ndarray:
    return sparse_kernels.matmul(np.asarray(x, np.float32), rows, threads)

  shape = jax.ShapeDtypeStruct((x.shape[0], rows.shape[1]), jnp.float32)
  return jax.pure_callback(host, shape, x.astype(jnp.float32), vmap_method="sequential")


def _sparse_interceptor(matrices: dict[tuple[str, ...], sparse_kernels.OutputRows],
                        threads: int) -> Callable[..., Any]:
  """Runs the nn.Dense layers named in `matrices` as sparse products; every other call as it is."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if not (isinstance(module, nn.Dense) and context.method_name == "__call__" and module.path in matrices):
      return next_fun(*args, **kwargs)
    x = args[0]
    y = sparse_matmul(x.reshape(-1, x.shape[-1]), matrices[module.path], threads).reshape(*x.shape[:-1], -1)
    bias = module.get_variable("params", "bias")
    y = y if bias is None else y + bias
    return y.astype(module.dtype or x.dtype)

  return intercept


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A jitted forward pass and the variables it holds on the device (and, for `sparse`, on the host)."""

  form: str
  apply: Callable[[Variables, jax.Array], jax.Array]
  variables: Variables  # On the device: arrays, and CodebookKernels in the `codebook` form.
  matrices: dict[tuple[str, ...], sparse_kernels.OutputRows]  # `sparse` only: kept weights, in host memory.
  metadata: dict[str, Any] | None = None  # What the file says about the model, when `dc_jax.load` made it.

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.apply(self.variables, images)

  @property
  def device_bytes(self) -> int:
    """Bytes of the model's variables held on the device."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(self.variables))

  @property
  def host_bytes(self) -> int:
    """Bytes of the sparse kernels held on the host (weights, input indices, output starts)."""
    return sum(rows.nbytes for rows in self.matrices.values())


def _without(variables: Variables, paths: set[tuple[str, ...]]) -> Variables:
  flat = {path: leaf for path, leaf in _flatten(variables).items() if path not in paths}
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, dict):
    return {path: leaf for key, value in tree.items() for path, leaf in _flatten(value, (*prefix, key)).items()}
  return {prefix: tree}


def predictor(model: nn.Module, variables: Variables, form: str = "dense", nibbles: bool | None = None,
              preprocess: Callable[[jax.Array], jax.Array] | None = None, metadata: dict[str, Any] | None = None,
              threads: int = 1, **apply_kwargs: Any) -> Predictor:
  """A ready `predict(images) -> logits` of a flax.linen model from a variables tree as `codec.read` returns it.

  Args:
    model: the module the variables belong to.
    variables: {"params": ..., "batch_stats": ...}, SharedKernel leaves where weights are shared.
    form: "dense", "codebook" or "sparse" (see the module docstring).
    nibbles: `codebook` form only; 4-bit codes where k + 1 <= 16 (None), always (True) or never (False).
    preprocess: applied to the images inside the jitted function first (`dc_jax.load`: uint8 -> normalised).
    metadata: kept on the Predictor, for its caller.
    threads: `sparse` form only; threads per large product (`sparse_kernels.matmul`): os.cpu_count() where cores
      are idle.
    apply_kwargs: passed to `model.apply` (e.g. train=False).
  """
  if form not in FORMS:
    raise ValueError(f"form={form!r} is not an inference form; valid: {', '.join(FORMS)}")
  matrices: dict[tuple[str, ...], sparse_kernels.OutputRows] = {}
  if form == "sparse":
    flat = _flatten(variables)
    sparse_paths = {path for path, leaf in flat.items()
                    if is_shared(leaf) and path[0] == "params" and path[-1] == "kernel" and leaf.mask.ndim == 2}
    matrices = {path[1:-1]: output_rows(flat[path]) for path in sparse_paths}
    variables = _without(variables, sparse_paths)
  if form == "codebook":
    host = jax.tree.map(lambda leaf: compact(leaf, nibbles) if is_shared(leaf) else leaf, variables,
                        is_leaf=is_shared)
  else:
    host = jax.tree.map(lambda leaf: _dense(leaf) if is_shared(leaf) else leaf, variables, is_leaf=is_shared)
  on_device = jax.device_put(host)

  def apply(variables: Variables, images: jax.Array) -> jax.Array:
    if preprocess is not None:
      images = preprocess(images)
    if form == "sparse":
      with nn.intercept_methods(_sparse_interceptor(matrices, threads)):
        return model.apply(variables, images, **apply_kwargs)
    return model.apply(_expand_all(variables), images, **apply_kwargs)

  return Predictor(form, jax.jit(apply), on_device, matrices, metadata)
