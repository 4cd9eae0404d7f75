"""What an execution provider's allocator holds for a model's activations on its first run.

The greedy offset plan (:mod:`onnxfit.analysis.memory`) is what a static planner can reach; an
execution provider allocates tensor by tensor as the nodes run, through its own allocator, and
holds more. Two allocators are simulated over the same tensor lifetimes (allocations of step *i*
before the frees of step *i*, in execution order; graph outputs are allocated too and live to
the end):

* :func:`bucket_pool_bytes` — DirectML's ``BucketizedBufferAllocator`` (ORT
  ``DmlExecutionProvider/src/BucketizedBufferAllocator.cpp``): every request is rounded up to a
  power of two of at least 64 KiB (``c_minResourceSizeExponent = 16``) and a freed buffer goes
  back to the pool of its bucket, reused only by requests of the same bucket. The pool then
  holds, per bucket, as many buffers as were ever live at once in that bucket. DirectML runs
  without ORT's memory patterns (``enable_mem_pattern`` must be off), so nothing plans the
  offsets ahead. Tensors inside a partition DirectML fuses into one compiled graph live in the
  graph's own temporary resource, planned by DirectML, so for a fully fused model this estimate
  is an upper side; the greedy plan stays the floor.
* :func:`bfc_arena_bytes` — ORT's ``BFCArena`` as the CPU and CUDA providers configure it by
  default (``bfc_arena.cc``: 256-byte rounding, best-fit over free chunks; a chunk is split
  only when it is at least twice the request or would waste 128 MiB, otherwise the request
  takes all of it; coalescing of free neighbours;
  and ``kNextPowerOfTwo`` extension: a region of ``curr_region_allocation_bytes`` — 1 MiB at
  first, doubled until the request fits — and doubled again after every extension that did not
  have to grow for the request, up to 1 GiB). The result is the sum of the regions, which is
  what ORT logs as ``Total allocated bytes``.

:func:`ep_lifetimes` gives the lifetimes each provider sees: ORT's CPU and CUDA kernels declare
in-place outputs (``MayInplace``) and view aliases. DirectML's kernels alias views (its
``REG_INFO_COPY`` rows) and declare no in-place reuse, but its operator fusion folds an
activation into the Conv / Gemm / MatMul / BatchNormalization / Add before it, so the activation
writes no tensor of its own; the in-place rule stands in for that fusion there.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import onnx_ir as ir

from onnxfit.analysis.lifetimes import analyze_lifetimes, execution_order, is_constant, value_bytes
from onnxfit.analysis.offsets import TensorLife

MIN_BUCKET_EXPONENT = 16
BFC_ROUND = 256
WORKSPACE = "<workspace>"
BFC_MAX_DEAD = 128 << 20
BFC_INITIAL_REGION = 1 << 20
BFC_MAX_POWER_OF_TWO_EXTEND = 1 << 30


def conv_workspace_bytes(node: ir.Node, *, threads: int = 1) -> int:
    """The scratch buffer ORT's CPU Conv takes from the arena while it runs (0 if none).

    MLAS (``MlasConvPrepare``) runs a 1x1, stride-1, unpadded Conv as a plain GEMM with no
    working buffer; other float Convs expand patches (im2col) into a working buffer of at most
    ``MLAS_CONV_WORKING_BUFFER_SIZE_PER_THREAD`` (16,384) floats per thread.
    """
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] is None:
        return 0
    w, y = node.inputs[1], node.outputs[0]
    if w.dtype != ir.DataType.FLOAT or w.shape is None or y.shape is None:
        return 0
    wdims = [d if isinstance(d, int) else 0 for d in w.shape.dims]
    ydims = [d if isinstance(d, int) else 0 for d in y.shape.dims]
    kernel = wdims[2:]
    attrs = {k: a.value for k, a in node.attributes.items()}
    strides = list(attrs.get("strides", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pointwise = all(k == 1 for k in kernel) and all(s == 1 for s in strides)
    if pointwise and not any(pads) and auto_pad in ("NOTSET", "VALID"):
        return 0
    k_len = wdims[1] * math.prod(kernel)
    out_size = math.prod(ydims[2:])
    return 4 * min(out_size * k_len, 16384 * max(1, threads))


def ep_lifetimes(
    model: ir.Model,
    *,
    provider: str,
    precision: str | None = None,
    qdq: bool | None = None,
    threads: int = 1,
) -> list[TensorLife]:
    """Arena buffers as ``provider`` allocates them, plus graph outputs (live to the end) and,
    on the CPU provider, each Conv's working buffer (:func:`conv_workspace_bytes`, live during
    its step only; ``threads`` intra-op threads).

    ``provider`` is an ORT provider name (module docstring). ``qdq`` applies the QDQ-fusion
    rule of :mod:`onnxfit.analysis.lifetimes`; by default on for the CPU and CUDA providers
    (ORT fuses QDQ groups at its extended level) and off for DirectML, which runs
    DequantizeLinear / QuantizeLinear as kernels of their own.
    """
    dml = provider == "DmlExecutionProvider"
    fuse = not dml if qdq is None else qdq
    walk = analyze_lifetimes(model, alias=True, inplace=True, precision=precision, qdq=fuse)
    lives = list(walk.lives)
    order = [n for n in execution_order(model.graph) if not is_constant(n)]
    end = len(order)
    step_of = {id(o): i for i, n in enumerate(order) for o in n.outputs}
    for v in model.graph.outputs:
        if id(v) in step_of:
            size = value_bytes(v, precision=precision) or 0
            lives.append(TensorLife(str(v.name), size, step_of[id(v)], end, (str(v.name),)))
    if provider == "CPUExecutionProvider" and precision in (None, "fp32"):
        for step, node in enumerate(order):
            ws = conv_workspace_bytes(node, threads=threads)
            if ws:
                name = f"{node.name or node.op_type}:workspace"
                lives.append(TensorLife(name, ws, step, step, (WORKSPACE,)))
    return lives


def _events(lives: Sequence[TensorLife]) -> list[tuple[int, int, int]]:
    """(step, 0 = alloc / 1 = free a workspace / 2 = free, index) in a runtime's order: a step's
    outputs first, then its working buffer, which goes before the inputs that die there."""
    ev = [(t.first, 0, i) for i, t in enumerate(lives) if t.size_bytes > 0]
    ev += [
        (t.last, 1 if t.values == (WORKSPACE,) else 2, i)
        for i, t in enumerate(lives)
        if t.size_bytes > 0
    ]
    return sorted(ev)


def bucket_size(nbytes: int, *, min_exponent: int = MIN_BUCKET_EXPONENT) -> int:
    """The DirectML allocator's bucket for a request: a power of two, at least 2**min_exponent."""
    exp = max(min_exponent, math.ceil(math.log2(max(1, nbytes))))
    return 1 << exp


def _allocs(kind: int) -> bool:
    return kind == 0


def bucket_pool_bytes(
    lives: Sequence[TensorLife], *, min_exponent: int = MIN_BUCKET_EXPONENT
) -> int:
    """Bytes DirectML's bucketized pool holds after running these lifetimes once."""
    live: dict[int, int] = {}
    peak: dict[int, int] = {}
    for _, kind, i in _events(lives):
        b = bucket_size(lives[i].size_bytes, min_exponent=min_exponent)
        live[b] = live.get(b, 0) + (1 if _allocs(kind) else -1)
        peak[b] = max(peak.get(b, 0), live[b])
    return sum(b * n for b, n in peak.items())


class _Bfc:
    """A minimal model of ORT's BFCArena (module docstring): regions, best fit, coalescing."""

    def __init__(self, initial_region: int, max_extend: int) -> None:
        self.region_bytes = initial_region
        self.max_extend = max_extend
        self.total = 0
        self.free: list[tuple[int, int]] = []  # (size, address), sorted: best fit by bisect
        self.chunks: dict[int, tuple[int, int]] = {}  # address -> (size, region)
        self.regions: list[tuple[int, int]] = []  # (start, end)
        self.used: set[int] = set()

    def _remove_free(self, addr: int, size: int) -> None:
        self.free.pop(bisect.bisect_left(self.free, (size, addr)))

    def alloc(self, nbytes: int) -> int:
        size = max(BFC_ROUND, -(-nbytes // BFC_ROUND) * BFC_ROUND)
        k = bisect.bisect_left(self.free, (size, -1))
        if k == len(self.free):
            self._extend(size)
            k = bisect.bisect_left(self.free, (size, -1))
        csize, addr = self.free.pop(k)
        region = self.chunks[addr][1]
        split = csize >= 2 * size or csize - size >= BFC_MAX_DEAD
        if not split:
            size = csize  # the request takes the whole chunk
        self.chunks[addr] = (size, region)
        if split:
            rest = addr + size
            self.chunks[rest] = (csize - size, region)
            bisect.insort(self.free, (csize - size, rest))
        self.used.add(addr)
        return addr

    def _extend(self, size: int) -> None:
        grew = False
        while size > self.region_bytes:
            self.region_bytes *= 2
            grew = True
        start = self.regions[-1][1] if self.regions else 0
        self.regions.append((start, start + self.region_bytes))
        self.chunks[start] = (self.region_bytes, len(self.regions) - 1)
        bisect.insort(self.free, (self.region_bytes, start))
        self.total += self.region_bytes
        if not grew and self.region_bytes * 2 < self.max_extend:
            self.region_bytes *= 2

    def release(self, addr: int) -> None:
        self.used.discard(addr)
        size, region = self.chunks[addr]
        nxt = addr + size
        if nxt in self.chunks and nxt not in self.used and self.chunks[nxt][1] == region:
            nsize = self.chunks.pop(nxt)[0]
            self._remove_free(nxt, nsize)
            size += nsize
        prev = next(
            (
                a
                for a, (s, r) in self.chunks.items()
                if a + s == addr and r == region and a not in self.used
            ),
            None,
        )
        if prev is not None:
            psize = self.chunks[prev][0]
            self._remove_free(prev, psize)
            del self.chunks[addr]
            addr, size = prev, psize + size
        self.chunks[addr] = (size, region)
        bisect.insort(self.free, (size, addr))


def bfc_arena_bytes(
    lives: Sequence[TensorLife],
    *,
    initial_region: int = BFC_INITIAL_REGION,
    max_extend: int = BFC_MAX_POWER_OF_TWO_EXTEND,
) -> int:
    """Bytes ORT's BFC arena reserves (sum of its regions) after running these lifetimes once."""
    arena = _Bfc(initial_region, max_extend)
    addr: dict[int, int] = {}
    for _, kind, i in _events(lives):
        if _allocs(kind):
            addr[i] = arena.alloc(lives[i].size_bytes)
        else:
            arena.release(addr.pop(i))
    return arena.total


def no_reuse_bytes(lives: Sequence[TensorLife]) -> int:
    """Every buffer of its own, nothing freed: the ceiling of any allocator without pooling."""
    return sum(t.size_bytes for t in lives)
