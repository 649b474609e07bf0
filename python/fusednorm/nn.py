"""Drop-in modules: subclasses of the torch.nn norms that override ``forward`` only.

State dict keys, initialisation, ``extra_repr`` and ``isinstance`` checks are torch's.  Two
optional instance attributes steer a module without changing its state:
``_fusednorm_backend`` (set by ``fusednorm.convert(model, backend=...)``) and
``_fusednorm_stats_hook`` (set by ``fusednorm.monitor``; called with the statistics the norm
computed anyway).
"""
import torch
from torch import Tensor

from . import functional as F

__all__ = ["LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm"]


def _emit(module, kind, stats):
    hook = getattr(module, "_fusednorm_stats_hook", None)
    if hook is not None and stats is not None:
        hook(module, kind, {k: (v.detach() if isinstance(v, Tensor) else v)
                            for k, v in stats.items()})


def _emit_raw(module, kind, mean, rstd, var, eps, count):
    """Hand the norm's own statistics to the statistics hook, if one is set (the dict is
    built only then: a plain forward pays one attribute lookup)."""
    hook = module.__dict__.get("_fusednorm_stats_hook")
    if hook is not None and rstd is not None:
        _emit(module, kind, {"mean": mean, "rstd": rstd, "var": var, "eps": eps,
                             "count": count})


def _backend(module):
    return module.__dict__.get("_fusednorm_backend")


class _Fused:
    """Marks fusednorm's modules in their repr (``LayerNorm(...)`` prints as
    ``fusednorm.LayerNorm(...)``), so a converted model shows what was swapped."""

    def _get_name(self):
        return "fusednorm." + type(self).__name__


class LayerNorm(_Fused, torch.nn.LayerNorm):
    def forward(self, input: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._layer_norm("layer_norm", input, self.normalized_shape,
                                                self.weight, self.bias, self.eps, None, False,
                                                _backend(self), False)
        _emit_raw(self, "layer_norm", mean, rstd, None, eps, n)
        return out


class RMSNorm(_Fused, torch.nn.RMSNorm):
    def forward(self, x: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._layer_norm("rms_norm", x, self.normalized_shape,
                                                self.weight, None, self.eps, None, False,
                                                _backend(self), True)
        _emit_raw(self, "rms_norm", mean, rstd, None, eps, n)
        return out


class GroupNorm(_Fused, torch.nn.GroupNorm):
    def forward(self, input: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._group_norm("group_norm", input, self.num_groups,
                                                self.weight, self.bias, self.eps, None,
                                                _backend(self))
        _emit_raw(self, "group_norm", mean, rstd, None, eps, n)
        return out


class _BatchNormMixin(_Fused):
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # torch's _BatchNorm.forward bookkeeping, done by the backend's kernels: in training
        # with tracked statistics num_batches_tracked is incremented on the device, and
        # momentum=None (cumulative average) takes 1 / num_batches_tracked there -- no host
        # synchronization.  An empty batch does not count as a step.
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        nbt = self.num_batches_tracked if self.training and self.track_running_stats else None
        out, mean, rstd, var, eps, n = F._batch_norm(
            "batch_norm", input, self.running_mean if use_running else None,
            self.running_var if use_running else None, self.weight, self.bias, bn_training,
            self.momentum if nbt is not None else (
                0.0 if self.momentum is None else self.momentum),
            self.eps, _backend(self), nbt)
        if bn_training:
            _emit_raw(self, "batch_norm", mean, rstd, var, eps, n)
        return out


class BatchNorm1d(_BatchNormMixin, torch.nn.BatchNorm1d):
    forward = _BatchNormMixin.forward


class BatchNorm2d(_BatchNormMixin, torch.nn.BatchNorm2d):
    forward = _BatchNormMixin.forward


class BatchNorm3d(_BatchNormMixin, torch.nn.BatchNorm3d):
    forward = _BatchNormMixin.forward


class _InstanceNormMixin(_Fused):
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        no_batch = self._get_no_batch_dim()
        feature_dim = input.dim() - no_batch
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"fusednorm.{type(self).__name__}: expected input's size at dim="
                    f"{feature_dim} to match num_features ({self.num_features}), but got: "
                    f"{input.size(feature_dim)}.")
        unbatched = input.dim() == no_batch
        x = input.unsqueeze(0) if unbatched else input
        use_input_stats = self.training or not self.track_running_stats
        out, mean, rstd, eps, n = F._instance_norm(
            "instance_norm", x, self.running_mean, self.running_var, self.weight, self.bias,
            use_input_stats, self.momentum if self.momentum is not None else 0.0, self.eps,
            _backend(self))
        _emit_raw(self, "instance_norm", mean, rstd, None, eps, n)
        return out.squeeze(0) if unbatched else out


class InstanceNorm1d(_InstanceNormMixin, torch.nn.InstanceNorm1d):
    forward = _InstanceNormMixin.forward


class InstanceNorm2d(_InstanceNormMixin, torch.nn.InstanceNorm2d):
    forward = _InstanceNormMixin.forward


class InstanceNorm3d(_InstanceNormMixin, torch.nn.InstanceNorm3d):
    forward = _InstanceNormMixin.forward


# torch.nn class -> fusednorm class, exact types only (a user subclass may override forward).
SWAPS = {
    torch.nn.LayerNorm: LayerNorm, torch.nn.RMSNorm: RMSNorm, torch.nn.GroupNorm: GroupNorm,
    torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d, torch.nn.InstanceNorm1d: InstanceNorm1d,
    torch.nn.InstanceNorm2d: InstanceNorm2d, torch.nn.InstanceNorm3d: InstanceNorm3d,
}

# SyncBatchNorm builds on _BatchNormMixin above, so it is imported last.
from .sync_batch_norm import SyncBatchNorm  # noqa: E402

SWAPS[torch.nn.SyncBatchNorm] = SyncBatchNorm
