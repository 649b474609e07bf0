"""Timers: wall time (do_bench), kernel-only time (CUDA graph replay or profiler device time),
and the copy-bandwidth baseline.

Two times per benchmark row, because they answer different questions:

* **wall** -- ``triton.testing.do_bench`` median of one call from Python: kernels plus whatever
  of the host path the GPU waits for (do_bench's 256 MB cache-clearing memset runs before its
  start event and hides up to ~70 us of host time). The race against the peers is run on it:
  it is what a training step pays.
* **kernel** -- the device time of the same call without the host: the call is captured once
  into a CUDA graph (after warm-up, on a side stream) and the graph is replayed under
  do_bench, so the host cost of a replay is one graph launch; where the call cannot be captured
  (a host synchronization, an allocation the capture refuses, a torch.compile guard that
  recompiles...), the sum of the device activities (kernels, memsets, memcpys) that
  ``torch.profiler`` records per call. The bandwidth targets are judged on it.

On a CPU ``time_cpu`` (median of ``time.perf_counter``) stands in for do_bench so the harness
can be tested; there is no kernel-only time there (method "n/a (cpu)").
"""
from __future__ import annotations

import math
import statistics
import time

import torch

# "auto": CUDA graph, else the profiler; "graph" / "profiler": that method only; "off": none.
KERNEL_METHODS = ("auto", "graph", "profiler", "off")


# --------------------------------------------------------------------------------------------
# Wall time
# --------------------------------------------------------------------------------------------
def time_cpu(fn, warmup_ms: float = 10, rep_ms: float = 40, min_iters: int = 3,
             max_iters: int = 200) -> float:
    """Median milliseconds of fn() with time.perf_counter (the CPU stand-in for do_bench)."""
    t = time.perf_counter()
    fn()
    est = max(time.perf_counter() - t, 1e-7)
    for _ in range(min(max_iters, int(warmup_ms / 1e3 / est))):
        fn()
    n = max(min_iters, min(max_iters, int(rep_ms / 1e3 / est)))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_cuda(fn, warmup_ms: float = 10, rep_ms: float = 40) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def timer_for(device: str):
    if device == "cuda":
        return time_cuda
    return time_cpu


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------
# Kernel-only time
# --------------------------------------------------------------------------------------------
def graph_time(make_fn, n_calls: int = 1, warmup_ms: float = 5, rep_ms: float = 20,
               bench=None) -> float:
    """Milliseconds per call of the device work of ``make_fn()()``, from CUDA graph replay.

    ``make_fn()`` builds the zero-argument call on the capture stream (a backward pass must
    record its forward there: autograd runs each backward op on its forward op's stream).
    The call is run ``n_calls`` times as warm-up on that stream (lazy initializations, the
    allocator), then ``n_calls`` calls -- one per rotating input set -- are captured into one
    graph; do_bench times replays of the graph (its cache clearing runs between replays) and
    the median replay is divided by ``n_calls``. What is left of the host is one graph launch
    per replay, spread over ``n_calls`` calls, and the gaps between dependent kernels inside
    the graph (~1 us each), which a fused op pays on the GPU too.
    """
    bench = bench or time_cuda
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn = make_fn()
        for _ in range(n_calls):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(n_calls):
                fn()
        # fn stays alive while the graph replays: it holds what the graph reads and did not
        # allocate itself (a backward's saved tensors)
        return bench(graph.replay, warmup_ms, rep_ms) / n_calls
    finally:
        graph.reset()  # frees the graph's private memory pool
        del graph, fn


def device_time_us(events) -> float:
    """Sum of the durations (us) of the device activities (kernels, memsets, memcpys) among
    ``torch.profiler`` events. Activities on concurrent streams would be counted twice (the
    benchmarked calls run on one stream)."""
    from torch.autograd import DeviceType
    return float(sum(e.time_range.elapsed_us() for e in events
                     if e.device_type == DeviceType.CUDA))


def profiler_time(make_fn, n_calls: int = 1, min_calls: int = 10) -> float:
    """Milliseconds per call of device activity recorded by ``torch.profiler`` (CUDA activity),
    over whole rounds of the ``n_calls`` rotating input sets, at least ``min_calls`` calls.
    Gaps between kernels are not counted: the time a fused kernel would need, not the call's
    span on the GPU."""
    from torch.profiler import ProfilerActivity, profile
    fn = make_fn()
    for _ in range(n_calls):  # warm-up: whatever the first calls initialize stays outside
        fn()
    torch.cuda.synchronize()
    k = n_calls * math.ceil(min_calls / n_calls)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(k):
            fn()
        torch.cuda.synchronize()
    fn = None
    us = device_time_us(prof.events())
    if not us > 0:
        raise RuntimeError("the profiler recorded no device activity")
    return us / k / 1e3


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def recover():
    """After a failed capture: let the device drain; a capture error is not sticky."""
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 -- the next timing reports whatever is still wrong
        pass
    torch.cuda.empty_cache()


def kernel_time(make_fn, device: str, *, n_calls: int = 1, method: str = "auto",
                warmup_ms: float = 5, rep_ms: float = 20, graph=None, profiler=None) -> dict:
    """Kernel-only time of one call: ``{"kernel_ms", "kernel_method", "kernel_note"}``.

    kernel_method: "cuda-graph" | "profiler" | "n/a (cpu)" | "off" | "failed";
    kernel_note: why the graph was not used, or why both methods failed (else None).
    ``graph`` / ``profiler`` replace ``graph_time`` / ``profiler_time`` (tests)."""
    if method not in KERNEL_METHODS:
        raise ValueError(f"kernel_time: method={method!r}; expected one of {KERNEL_METHODS}")
    out = {"kernel_ms": None, "kernel_method": None, "kernel_note": None}
    if device != "cuda":
        out["kernel_method"] = "n/a (cpu)"
        return out
    if method == "off":
        out["kernel_method"] = "off"
        return out
    graph = graph or graph_time
    profiler = profiler or profiler_time
    notes = []
    if method in ("auto", "graph"):
        try:
            out.update(kernel_ms=graph(make_fn, n_calls, warmup_ms, rep_ms),
                       kernel_method="cuda-graph")
            return out
        except Exception as e:  # noqa: BLE001 -- the reason goes into the row
            notes.append("graph capture failed: " + _short(e))
            recover()
    if method in ("auto", "profiler"):
        try:
            out.update(kernel_ms=profiler(make_fn, n_calls), kernel_method="profiler")
            out["kernel_note"] = "; ".join(notes) or None
            return out
        except Exception as e:  # noqa: BLE001
            notes.append("profiler failed: " + _short(e))
            recover()
    out.update(kernel_method="failed", kernel_note="; ".join(notes))
    return out


# --------------------------------------------------------------------------------------------
# Copy bandwidth
# --------------------------------------------------------------------------------------------
def copy_bandwidth(device: str, nbytes: int | None = None, warmup_ms: float = 10,
                   rep_ms: float = 100) -> dict:
    """Device-to-device copy bandwidth: dst.copy_(src), bytes read + written. (At 1 GiB the
    host cost of the one launch is negligible: wall and kernel time agree.)"""
    if nbytes is None:
        nbytes = 2**30 if device == "cuda" else 2**25  # >= 1 GB on the GPU, as the brief asks
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = timer_for(device)(lambda: dst.copy_(src), warmup_ms, rep_ms)
    moved = 2 * src.numel() * 4
    del src, dst
    return {"copy_bytes": moved, "copy_ms": ms, "copy_gbps": gbps(moved, ms)}
