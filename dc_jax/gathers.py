"""The batch-1 sparse product with vector gathers: LLVM IR, compiled for this CPU by llvmlite at first use.

numba's loops in sparse_kernels load x one kept weight at a time; written
out in IR, sixteen kept weights take one AVX-512 gather of x (32-bit
indices), one load of their weights and one fused multiply-add: 1.4-1.5x
faster on the 2-core test machine (4096x9216 at 9% kept: 1.7 against 2.4-2.5
ms; bench/sparse_fc.py). numba's own vectorized loop (fastmath) was twice as
slow as its scalar loads there. Used only where LLVM compiles the gather to a
gather instruction for this CPU (`available`); elsewhere the loops run.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np

LANES = 16  # One 512-bit vector of float32.


def _vector(kind: str) -> str:
  return f"<{LANES} x {kind}>"


def _ir() -> str:
  """rows(starts, inputs, weights, x, out, outputs, accumulate): out[j] (+)= sum of weights[p] * x[inputs[p]].

  For each output j, its kept weights p in [starts[j], starts[j + 1]) run
  sixteen at a time; the last partial sixteen under a mask. `accumulate`
  adds to out instead of storing: the blocks of inputs after the first.
  """
  f32, i16, i32, ptr, bit = (_vector(kind) for kind in ("float", "i16", "i32", "ptr", "i1"))
  ones = "<" + ", ".join(["i1 true"] * LANES) + ">"
  lanes = "<" + ", ".join(f"i32 {i}" for i in range(LANES)) + ">"
  gather = f"@llvm.masked.gather.v{LANES}f32.v{LANES}p0"
  return f"""
declare {f32} {gather}({ptr}, i32 immarg, {bit}, {f32})
declare {f32} @llvm.masked.load.v{LANES}f32.p0(ptr, i32 immarg, {bit}, {f32})
declare {i16} @llvm.masked.load.v{LANES}i16.p0(ptr, i32 immarg, {bit}, {i16})
declare {f32} @llvm.fma.v{LANES}f32({f32}, {f32}, {f32})
declare float @llvm.vector.reduce.fadd.v{LANES}f32(float, {f32})

define void @rows(ptr noalias %starts, ptr noalias %inputs, ptr noalias %weights, ptr noalias %x,
                  ptr noalias %out, i64 %outputs, i1 %accumulate) {{
entry:
  %none = icmp eq i64 %outputs, 0
  br i1 %none, label %exit, label %output
output:
  %j = phi i64 [0, %entry], [%next, %last]
  %start_at = getelementptr i64, ptr %starts, i64 %j
  %start = load i64, ptr %start_at
  %next = add i64 %j, 1
  %end_at = getelementptr i64, ptr %starts, i64 %next
  %end = load i64, ptr %end_at
  br label %more
more:
  %p = phi i64 [%start, %output], [%p_next, %sixteen]
  %sum = phi {f32} [zeroinitializer, %output], [%sum_next, %sixteen]
  %p_next = add i64 %p, {LANES}
  %whole = icmp sle i64 %p_next, %end
  br i1 %whole, label %sixteen, label %last
sixteen:
  %index_at = getelementptr i16, ptr %inputs, i64 %p
  %indices = load {i16}, ptr %index_at, align 2
  %wide = zext {i16} %indices to {i32}
  %x_at = getelementptr float, ptr %x, {i32} %wide
  %xs = call {f32} {gather}({ptr} %x_at, i32 4, {bit} {ones}, {f32} poison)
  %weight_at = getelementptr float, ptr %weights, i64 %p
  %ws = load {f32}, ptr %weight_at, align 4
  %sum_next = call {f32} @llvm.fma.v{LANES}f32({f32} %ws, {f32} %xs, {f32} %sum)
  br label %more
last:
  %left = sub i64 %end, %p
  %left32 = trunc i64 %left to i32
  %left_one = insertelement {i32} poison, i32 %left32, i32 0
  %left_all = shufflevector {i32} %left_one, {i32} poison, {i32} zeroinitializer
  %mask = icmp ult {i32} {lanes}, %left_all
  %tail_index_at = getelementptr i16, ptr %inputs, i64 %p
  %tail_indices = call {i16} @llvm.masked.load.v{LANES}i16.p0(ptr %tail_index_at, i32 2, {bit} %mask,
                                                              {i16} zeroinitializer)
  %tail_wide = zext {i16} %tail_indices to {i32}
  %tail_x_at = getelementptr float, ptr %x, {i32} %tail_wide
  %tail_xs = call {f32} {gather}({ptr} %tail_x_at, i32 4, {bit} %mask, {f32} zeroinitializer)
  %tail_weight_at = getelementptr float, ptr %weights, i64 %p
  %tail_ws = call {f32} @llvm.masked.load.v{LANES}f32.p0(ptr %tail_weight_at, i32 4, {bit} %mask,
                                                         {f32} zeroinitializer)
  %sum_all = call {f32} @llvm.fma.v{LANES}f32({f32} %tail_ws, {f32} %tail_xs, {f32} %sum)
  %total = call reassoc float @llvm.vector.reduce.fadd.v{LANES}f32(float -0.0, {f32} %sum_all)
  %out_at = getelementptr float, ptr %out, i64 %j
  %before = load float, ptr %out_at
  %added = fadd float %before, %total
  %value = select i1 %accumulate, float %added, float %total
  store float %value, ptr %out_at
  %done = icmp eq i64 %next, %outputs
  br i1 %done, label %exit, label %output
exit:
  ret void
}}
"""


_ROWS_TYPE = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_bool)


@functools.cache
def _compiled() -> tuple[object, Callable[..., None] | None]:
  """(the engine, which must outlive the function; `rows`, or None where this CPU has no gather instruction)."""
  llvm.initialize_native_target()
  llvm.initialize_native_asmprinter()
  module = llvm.parse_assembly(_ir())
  module.verify()
  machine = llvm.Target.from_default_triple().create_target_machine(
      cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
  engine = llvm.create_mcjit_compiler(module, machine)
  engine.finalize_object()
  native = "vgatherdps" in machine.emit_assembly(module)  # Not a gather split into scalar loads.
  return engine, _ROWS_TYPE(engine.get_function_address("rows")) if native else None


def available() -> bool:
  """Whether LLVM compiles the gathers to gather instructions for this CPU (x86 with AVX-512 or AVX2, where fast)."""
  return _compiled()[1] is not None


def rows_product(starts: np.ndarray, inputs: np.ndarray, weights: np.ndarray, x: np.ndarray, out: np.ndarray,
                 accumulate: bool) -> None:
  """out[j] (+)= sum of weights[p] * x[inputs[p]] for p in starts[j]:starts[j + 1], for every j < out.size.

  The caller vouches for the layout (sparse_kernels.OutputRows): starts
  int64, inputs uint16 below x.size, weights, x and out float32, all
  contiguous. The GIL is released while it runs (ctypes): threads overlap.
  """
  rows = _compiled()[1]
  assert rows is not None and starts.size == out.size + 1, "no vector gathers on this CPU, or a mismatched layout"
  rows(starts.ctypes.data, inputs.ctypes.data, weights.ctypes.data, x.ctypes.data, out.ctypes.data, out.size,
       accumulate)
