"""SyncBatchNorm over torch.distributed with fusednorm's batch_norm op.

Forward, per rank:  (count, mean, M2) per channel from ``fusednorm::batch_norm_fwd`` with
training=True (M2 = biased var * count; an empty shard contributes (0, 0, 0) without calling
the op) -> ONE all_gather of [count | mean | M2] in float64 -> Chan's merge

    N = sum n_i,  mean = sum n_i m_i / N,  M2 = sum (M2_i + n_i (m_i - mean)^2)

which gives exactly the statistics of the concatenated batch for any shard sizes, empty ones
included -> one normalizing pass: the op's eval path with the global (mean, var) passed as the
running statistics.  Running statistics are updated on the device from the global statistics
(unbiased with the global count), identically on every rank.

Backward, per rank: sum(dy) and sum(dy * xhat) per channel from ``fusednorm::batch_norm_bwd``
with training=False (dbias and dweight with a unit weight) -> ONE all_reduce -> the local dx
pass  dx = rstd * w * (dy - sum_dy / N - xhat * sum_dy_xhat / N).  dweight/dbias are the local
sums (DDP all-reduces parameter gradients, as with torch.nn.SyncBatchNorm).

The only synchronizations are the two collectives: counts travel as tensors with the
statistics, and nothing calls .item().  Outside training, without an initialized process
group, or with a world size of 1 the module is a local fusednorm BatchNorm (as torch's falls
back to F.batch_norm).  Unlike torch.nn.SyncBatchNorm, CPU tensors are accepted (gloo).
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import _backend
from . import _validate as V
from ._layout import spatial
from ._mixins import BatchNormMixin, backend_of, emit
from .ops._common import laid_out_like, stat_dtype
from .reference._common import channel as _channel

__all__ = ["SyncBatchNorm"]

_FN = "SyncBatchNorm"


def _all_gather(local: Tensor, group, world_size: int) -> Tensor:
    """(world_size, K) from each rank's (K,): one collective."""
    if dist.get_backend(group) == "nccl":
        out = local.new_empty((world_size, local.numel()))
        dist.all_gather_into_tensor(out, local, group=group)
        return out
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local, group=group)
    return torch.stack(parts)


class _SyncBatchNormFn(torch.autograd.Function):
    """-> (out, global mean, global biased var, global count); only out is differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, world_size, backend):
        c = x.shape[1]
        sd = stat_dtype(x)
        # float64 for the exchange and the merge: counts stay exact past 2^24, and the merge
        # of C-sized vectors costs nothing.
        if x.numel() > 0:
            # The training call also writes a normalized output that is discarded: the price
            # of reusing the op's statistics (one extra write of x-sized data).
            _, mean, _, var, *_ = torch.ops.fusednorm.batch_norm_fwd(
                x, None, None, None, None, None, True, eps, 0.0, backend)
            n = x.numel() // c
            local = torch.cat([mean.new_full((1,), n, dtype=torch.float64),
                               mean.double(), var.double() * n])
        else:
            local = x.new_zeros((2 * c + 1,), dtype=torch.float64)
        gathered = _all_gather(local, group, world_size)       # (W, 2C + 1)
        counts = gathered[:, :1]                                # (W, 1)
        means, m2s = gathered[:, 1:c + 1], gathered[:, c + 1:]
        total = counts.sum(0)                                   # (1,)
        safe = total.clamp_min(1)
        mean_g = (counts * means).sum(0) / safe
        m2_g = (m2s + counts * (means - mean_g).square()).sum(0)
        var_g = m2_g / safe
        mean_s, var_s = mean_g.to(sd), var_g.to(sd)
        out, _, rstd, *_ = torch.ops.fusednorm.batch_norm_fwd(
            x, weight, bias, mean_s, var_s, None, False, eps, 0.0, backend)
        ctx.save_for_backward(x, weight, mean_s, rstd, total)
        ctx.group, ctx.world_size, ctx.backend = group, world_size, backend
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(mean_g, var_g, total)
        return out, mean_g, var_g, total

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar, _dtotal):
        x, weight, mean, rstd, total = ctx.saved_tensors
        c = x.shape[1]
        sd = stat_dtype(x)
        if x.numel() > 0:
            dout = laid_out_like(dout, x)
            # With a unit fp32 (fp64) weight the eval backward returns sum(dy * xhat) and
            # sum(dy) in the statistics dtype, whatever the weight's dtype (or its absence).
            # Its dx output (rstd * dy) is discarded.
            ones = x.new_ones((c,), dtype=sd)
            _, sum_dy_xhat, sum_dy = torch.ops.fusednorm.batch_norm_bwd(
                dout, x, ones, ones, mean, rstd, False, ctx.backend)
            sums = torch.cat([sum_dy.to(sd), sum_dy_xhat.to(sd)])
        else:
            sums = x.new_zeros((2 * c,), dtype=sd)
        local = sums.clone()
        dist.all_reduce(sums, group=ctx.group)
        dx = None
        if ctx.needs_input_grad[0]:
            if x.numel() > 0:
                n = total.to(sd)
                g_dy, g_dy_xhat = sums[:c] / n, sums[c:] / n
                scale = rstd if weight is None else rstd * weight.to(sd)
                xhat = (x.to(sd) - _channel(mean, x)) * _channel(rstd, x)
                dx = (dout.to(sd) - _channel(g_dy, x) - xhat * _channel(g_dy_xhat, x)) \
                    * _channel(scale, x)
                dx = laid_out_like(dx.to(x.dtype), x)
            else:
                dx = torch.empty_like(x)
        dw = local[c:].to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] \
            else None
        db = local[:c].to(ctx.bias_dtype) if ctx.bias_dtype is not None \
            and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None


class SyncBatchNorm(torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm with fusednorm's kernels: two collectives per step (one
    all_gather of the statistics forward, one all_reduce of two per-channel sums backward)."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        group = None
        if bn_training and self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            world_size = dist.get_world_size(group)
        if group is None or world_size == 1:
            return BatchNormMixin.forward(self, input)

        fn = "batch_norm"
        c = input.shape[1]
        V.check_param(fn, "weight", self.weight, (c,), input)
        V.check_param(fn, "bias", self.bias, (c,), input)
        eps = V.check_eps(fn, self.eps)
        # torch's own kernels have no collective statistics: on a CPU "auto" is the reference
        name = _backend.resolve(fn, "batch_norm", backend_of(self), input,
                                "SyncBatchNorm statistics")
        x = spatial(input)
        out, mean, var, total = _SyncBatchNormFn.apply(x, self.weight, self.bias, eps, group,
                                                       world_size, name)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean, var, total)
        if getattr(self, "_fusednorm_stats_hook", None) is not None:
            # Global statistics; count is a device tensor here (no host sync to read it).
            emit(self, "batch_norm", {"mean": mean.float(), "var": var.float(),
                                       "rstd": torch.rsqrt(var + eps).float(), "eps": eps,
                                       "count": total})
        return out

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, total: Tensor):
        """torch's momentum semantics on the device; a step whose global batch is empty
        changes nothing (no host synchronization to find out)."""
        stepped = total > 0                                         # (1,) bool
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(stepped.reshape(()).to(self.num_batches_tracked.dtype))
        if self.momentum is None:
            factor = 1.0 / self.num_batches_tracked.clamp_min(1).to(torch.float64)
        else:
            factor = self.momentum
        unbiased = var * total / (total - 1)
        for buf, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
            new = buf.to(torch.float64) * (1 - factor) + batch * factor
            buf.copy_(torch.where(stepped, new, buf.to(torch.float64)))

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module,
                               process_group: Optional[object] = None) -> torch.nn.Module:
        """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, yielding fusednorm's
        SyncBatchNorm: every BatchNorm*d (torch's, fusednorm's, torch's SyncBatchNorm) is
        replaced, sharing its parameters and buffers; mode, qconfig and the fusednorm
        backend choice are kept."""
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
            if "_fusednorm_backend" in module.__dict__:
                out._fusednorm_backend = module._fusednorm_backend
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return out
