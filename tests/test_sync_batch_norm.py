"""fusednorm SyncBatchNorm over torch.distributed (gloo on CPU, 2 and 4 ranks).

Ranks are forked from a forkserver that preloaded torch, torch._dynamo and fusednorm (a fresh
interpreter, not a fork of pytest): plain spawn pays ~9 s of imports per rank on 2 cores.

Every rank holds one shard of a batch (uneven sizes, empty shards included); its output, input
gradient, the rank-summed weight/bias gradients (what DDP's all-reduce produces) and its
running statistics must equal those of one torch.nn.BatchNorm over the concatenated batch.
Each rank checks its own numbers against that oracle and reports a traceback or None through
a queue; the parent fails the test on the first report of failure, on a rank that dies, or
after a deadline, and terminates every rank it started, so nothing hangs.
"""
import copy
import datetime
import itertools
import multiprocessing as mp
import queue
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn as tnn

import fusednorm
import fusednorm.nn as fnn
from fusednorm.sync_batch_norm import SyncBatchNorm
from _util import assert_accurate

SIZES = {2: [5, 3], 4: [5, 0, 3, 8]}
C = 3
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}
TORCH_BN = {2: tnn.BatchNorm1d, 3: tnn.BatchNorm1d, 4: tnn.BatchNorm2d, 5: tnn.BatchNorm3d}


# ------------------------------------------------------------------------------- harness
def _worker(rank, world, init_file, case, q, pg):
    try:
        torch.set_num_threads(1)
        if pg == "nccl":
            torch.cuda.set_device(0)  # every rank on the one GPU (NCCL may refuse: see below)
        dist.init_process_group(pg, init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=30))
        try:
            globals()[case](rank, world)
        finally:
            dist.destroy_process_group()
        q.put((rank, None))
    except BaseException:  # noqa: B902  (anything, reported to the parent)
        q.put((rank, traceback.format_exc()))


def _spawn(world, case, tmp_path, timeout=60.0, pg="gloo"):
    """Run ``case(rank, world)`` on ``world`` ranks of process-group backend ``pg``; fail on
    any rank's failure (raise _RankFailed with the traceback for the caller to judge)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed", "fusednorm",
                                "test_sync_batch_norm"])
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, str(tmp_path / "store"), case, q, pg),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    done, deadline = set(), time.monotonic() + timeout
    try:
        while len(done) < world:
            try:
                rank, tb = q.get(timeout=0.2)
            except queue.Empty:
                dead = {r: p.exitcode for r, p in enumerate(procs)
                        if r not in done and p.exitcode not in (None, 0)}
                if dead:
                    pytest.fail(f"{case}: rank(s) died without a report, exit codes {dead}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{case}: timed out after {timeout:.0f} s; ranks done: "
                                f"{sorted(done)} of {world}")
                continue
            done.add(rank)
            if tb is not None:
                raise _RankFailed(f"{case}: rank {rank} of {world} failed:\n{tb}")
    finally:
        for p in procs:
            p.join(timeout=10 if len(done) == world else 0.1)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


class _RankFailed(Exception):
    """A rank reported a traceback (the message carries it)."""


# ------------------------------------------------------------------------ per-rank checks
def _randn(*shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _sync_bn(start, group, backend):
    """``start`` (a torch or fusednorm BatchNorm) converted, running fusednorm ``backend``."""
    ours = SyncBatchNorm.convert_sync_batchnorm(start, process_group=group)
    assert type(ours) is SyncBatchNorm
    ours._fusednorm_backend = backend
    return ours


def _shard(sizes, index):
    """The rows [lo, hi) of the concatenated batch that shard ``index`` holds."""
    return sum(sizes[:index]), sum(sizes[:index + 1])


def _rank_summed_grad(param, group):
    """What DDP does with a parameter gradient: the sum over the group's ranks."""
    grad = param.grad.clone()
    dist.all_reduce(grad, group=group)
    return grad


def _check_against_concat(rank, sizes, group, my_index, *, dtype, tail, channels_last,
                          momentum, affine=True, track=True, source="torch", steps=2,
                          device="cpu", backend=None):
    """One rank's part of: SyncBatchNorm over shards ``sizes`` == torch BN over their
    concatenation, for ``steps`` training steps (momentum=None: cumulative average).
    ``backend``: the fusednorm backend the SyncBatchNorm runs (None: the per-call default)."""
    dims = 2 + len(tail)
    ref = TORCH_BN[dims](C, momentum=momentum, affine=affine, track_running_stats=track)
    ref = ref.to(device=device, dtype=dtype)
    with torch.no_grad():
        if affine:
            ref.weight.copy_(_randn(C, seed=1, dtype=dtype))
            ref.bias.copy_(_randn(C, seed=2, dtype=dtype))
        if track:
            ref.running_mean.copy_(_randn(C, seed=3, dtype=dtype))
            ref.running_var.copy_(_randn(C, seed=4, dtype=dtype).abs() + 0.5)
    start = copy.deepcopy(ref)
    if source == "fusednorm":
        start = fnn.__dict__[type(ref).__name__](C, momentum=momentum, affine=affine,
                                                 track_running_stats=track)
        start = start.to(device=device, dtype=dtype)
        start.load_state_dict(ref.state_dict())
    ours = _sync_bn(start, group, backend)
    lo, hi = _shard(sizes, my_index)
    what = (f"rank {rank} dtype={dtype} tail={tail} channels_last={channels_last} "
            f"momentum={momentum} affine={affine} track={track} source={source} "
            f"device={device} backend={backend}")
    tol = TOL[dtype]
    for step in range(steps):
        x = _randn(sum(sizes), C, *tail, seed=10 + step, dtype=dtype).to(device) * 2 + 3
        g = _randn(sum(sizes), C, *tail, seed=20 + step, dtype=dtype).to(device)
        xr = x.clone().requires_grad_()
        r = ref(xr)
        r.backward(g)
        xs = x[lo:hi]
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        xs = xs.detach().requires_grad_()
        o = ours(xs)
        if channels_last:
            assert o.is_contiguous(memory_format=torch.channels_last), what
        torch.testing.assert_close(o, r[lo:hi], **tol, msg=lambda m: f"{what} out: {m}")
        (o * g[lo:hi]).sum().backward()
        if channels_last and xs.numel():
            assert xs.grad.is_contiguous(memory_format=torch.channels_last), what
        torch.testing.assert_close(xs.grad, xr.grad[lo:hi], **tol,
                                   msg=lambda m: f"{what} dx: {m}")
        if affine:
            for name in ("weight", "bias"):
                grad = _rank_summed_grad(getattr(ours, name), group)
                torch.testing.assert_close(grad, getattr(ref, name).grad, **tol,
                                           msg=lambda m: f"{what} d{name}: {m}")
            ours.zero_grad()
            ref.zero_grad()
        if track:
            for name in ("running_mean", "running_var"):
                torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **tol,
                                           msg=lambda m: f"{what} {name}: {m}")
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    # eval: local path with the (synchronized) running statistics, no collective
    if track:
        ours.eval()
        ref.eval()
        x = _randn(sum(sizes), C, *tail, seed=30, dtype=dtype).to(device)
        torch.testing.assert_close(ours(x[lo:hi]), ref(x)[lo:hi], **tol)


def _check_mixed(rank, sizes, group, my_index, *, dtype, backend, device="cpu"):
    """AMP's case: fp16/bf16 activations, fp32 parameters and running statistics.  Output and
    dx keep the activation dtype, parameter grads and running stats stay fp32, and each is as
    accurate against float64 as torch's BatchNorm over the concatenated batch."""
    ref = tnn.BatchNorm2d(C).to(device)
    with torch.no_grad():
        ref.weight.copy_(_randn(C, seed=1, dtype=torch.float32))
        ref.bias.copy_(_randn(C, seed=2, dtype=torch.float32))
    ref64 = copy.deepcopy(ref).double()
    ours = _sync_bn(copy.deepcopy(ref), group, backend)
    lo, hi = _shard(sizes, my_index)
    what = f"rank {rank} mixed {dtype} backend={backend} device={device}"
    x = (_randn(sum(sizes), C, 4, 5, seed=40, dtype=dtype) * 2 + 3).to(device)
    g = _randn(sum(sizes), C, 4, 5, seed=41, dtype=dtype).to(device)
    xr, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
    r = ref(xr)
    r.backward(g)
    r64 = ref64(x64)
    r64.backward(g.double())
    xs = x[lo:hi].detach().requires_grad_()
    o = ours(xs)
    (o * g[lo:hi]).sum().backward()
    assert o.dtype == xs.grad.dtype == dtype, what
    assert ours.weight.grad.dtype == ours.running_var.dtype == torch.float32, what
    if hi > lo:
        assert_accurate(o, r64[lo:hi], r[lo:hi], dtype, what + " out")
        assert_accurate(xs.grad, x64.grad[lo:hi], xr.grad[lo:hi], dtype, what + " dx")
    for name in ("weight", "bias"):
        grad = _rank_summed_grad(getattr(ours, name), group)
        theirs = (getattr(ref, name).grad.double() - getattr(ref64, name).grad).abs().max()
        err = (grad.double() - getattr(ref64, name).grad).abs().max()
        assert err <= 2 * theirs + 1e-5, f"{what} d{name}: {err:.3g} vs torch's {theirs:.3g}"
    for name in ("running_mean", "running_var"):  # fp32 statistics of low-precision data
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=1e-6,
                                   rtol=1e-6, msg=lambda m: f"{what} {name}: {m}")


def case_world(rank, world):
    sizes, group = SIZES[world], dist.group.WORLD
    for dtype, (tail, cl), momentum in itertools.product(
            (torch.float64, torch.float32), (((4, 5), False), ((4, 5), True), ((), False)),
            (0.1, None)):
        _check_against_concat(rank, sizes, group, rank, dtype=dtype, tail=tail,
                              channels_last=cl, momentum=momentum)
    _check_against_concat(rank, sizes, group, rank, dtype=torch.float64, tail=(2, 3, 2),
                          channels_last=False, momentum=0.3, source="fusednorm")
    _check_against_concat(rank, sizes, group, rank, dtype=torch.float64, tail=(7,),
                          channels_last=False, momentum=0.1, affine=False)
    _check_against_concat(rank, sizes, group, rank, dtype=torch.float32, tail=(4, 5),
                          channels_last=True, momentum=0.1, affine=True, track=False)
    for dtype, backend in itertools.product((torch.bfloat16, torch.float16), ("reference", "triton")):
        _check_mixed(rank, sizes, group, rank, dtype=dtype, backend=backend)


def case_subgroups(rank, world):
    """process_group honoured: ranks {0, 1} and {2, 3} normalize over their own pair."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine, index = groups[rank // 2], rank % 2
    sizes = SIZES[world][2 * (rank // 2):2 * (rank // 2) + 2]
    _check_against_concat(rank, sizes, mine, index, dtype=torch.float64, tail=(4, 5),
                          channels_last=True, momentum=None)


def case_all_empty(rank, world):
    """A step whose whole global batch is empty changes no statistics and no counter."""
    m = SyncBatchNorm(C).double()
    before = copy.deepcopy(m.state_dict())
    x = torch.empty(0, C, 4, dtype=torch.float64, requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert m.weight.grad.abs().sum().item() == 0


def _gpu_backends():
    avail = fusednorm.available_backends()
    return [b for b in ("triton", "cuda") if avail[b] is True]


def case_cuda(rank, world):
    """Every rank on the one GPU: the kernels' statistics and sums through the collectives."""
    sizes, group = SIZES[world], dist.group.WORLD
    assert _gpu_backends(), fusednorm.available_backends()
    for backend in _gpu_backends():
        for (tail, cl), momentum in itertools.product(
                (((4, 5), False), ((4, 5), True), ((6,), False)), (0.1, None)):
            _check_against_concat(rank, sizes, group, rank, dtype=torch.float32, tail=tail,
                                  channels_last=cl, momentum=momentum, device="cuda",
                                  backend=backend)
    for dtype, backend in itertools.product((torch.bfloat16, torch.float16), _gpu_backends()):
        _check_mixed(rank, sizes, group, rank, dtype=dtype, backend=backend, device="cuda")
    # float64 is the reference backend's, on the GPU
    _check_against_concat(rank, sizes, group, rank, dtype=torch.float64, tail=(4, 5),
                          channels_last=True, momentum=0.1, device="cuda")


def case_fail(rank, world):
    if rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    t = torch.zeros(1)
    dist.all_reduce(t)  # rank 0 blocks here; the parent must not wait for it


# ---------------------------------------------------------------------------------- tests
@pytest.mark.timeout(120)
def test_two_ranks(tmp_path):
    _spawn(2, "case_world", tmp_path)


@pytest.mark.timeout(120)
def test_four_ranks_with_empty_shard(tmp_path):
    _spawn(4, "case_world", tmp_path)


@pytest.mark.timeout(120)
def test_four_ranks_subgroups_and_all_empty(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _spawn(4, "case_subgroups", tmp_path / "a")
    _spawn(2, "case_all_empty", tmp_path / "b")


@pytest.mark.timeout(60)
def test_rank_failure_fails_fast(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(_RankFailed, match=r"rank \d of 2 failed"):
        _spawn(2, "case_fail", tmp_path)
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------- on a GPU (one card)
NCCL_ONE_GPU = "Duplicate GPU"  # NCCL's refusal of two ranks on one device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_on_one_gpu_gloo(tmp_path, world):
    """CUDA tensors through gloo (which stages them through the host): every rank on the one
    GPU, so the kernel backends run inside SyncBatchNorm with uneven and empty shards."""
    _spawn(world, "case_cuda", tmp_path, timeout=150)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not (dist.is_available() and dist.is_nccl_available()),
                    reason="torch built without NCCL")
@pytest.mark.timeout(180)
def test_two_ranks_nccl_one_gpu(tmp_path):
    """The NCCL path (all_gather_into_tensor) with both ranks on the one GPU.  NCCL refuses
    two ranks on one device; that refusal, and only it, is a skip that quotes NCCL."""
    try:
        _spawn(2, "case_cuda", tmp_path, timeout=75, pg="nccl")
    except _RankFailed as e:
        if NCCL_ONE_GPU not in str(e):
            raise
        line = next(ln for ln in str(e).splitlines() if NCCL_ONE_GPU in ln)
        pytest.skip(f"NCCL refuses two ranks on one GPU: {line.strip()[:300]}")


# --------------------------------------------------------------- single process (no spawn)
def test_falls_back_to_local_batch_norm_without_process_group():
    assert not dist.is_initialized()
    ref = tnn.BatchNorm2d(C, momentum=None)
    ours = SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ref))
    for mode in ("train", "train", "eval"):
        getattr(ref, mode)()
        getattr(ours, mode)()
        x = _randn(4, C, 3, 5, seed=5, dtype=torch.float32)
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        r, o = ref(xr), ours(xo)
        torch.testing.assert_close(o, r)
        r.square().sum().backward()
        o.square().sum().backward()
        torch.testing.assert_close(xo.grad, xr.grad)
        torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 2


def test_convert_sync_batchnorm():
    model = tnn.Sequential(tnn.Conv2d(3, 4, 1), tnn.BatchNorm2d(4), fnn.BatchNorm1d(5).double(),
                           tnn.Sequential(tnn.SyncBatchNorm(6, momentum=None)), tnn.LayerNorm(4))
    model[2]._fusednorm_backend = "reference"
    model[1].eval()
    params = {id(p) for p in model.parameters()}
    bufs = {id(b) for b in model.buffers()}
    sentinel = object()
    out = SyncBatchNorm.convert_sync_batchnorm(model, process_group=sentinel)
    assert out is model
    bns = [model[1], model[2], model[3][0]]
    assert all(type(m) is SyncBatchNorm and m.process_group is sentinel for m in bns)
    assert type(model[4]) is tnn.LayerNorm and type(model[0]) is tnn.Conv2d
    assert {id(p) for p in model.parameters()} == params
    assert {id(b) for b in model.buffers()} == bufs
    assert not model[1].training and model[2].training
    assert model[2].weight.dtype == torch.float64 and model[2]._fusednorm_backend == "reference"
    assert model[3][0].momentum is None and model[3][0].num_features == 6
    single = SyncBatchNorm.convert_sync_batchnorm(tnn.BatchNorm3d(2))
    assert type(single) is SyncBatchNorm and isinstance(single, tnn.SyncBatchNorm)
