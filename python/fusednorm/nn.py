"""Drop-in modules: subclasses of the torch.nn norms that override ``forward`` only.

State dict keys, initialisation, ``extra_repr`` and ``isinstance`` checks are torch's.  Two
optional instance attributes steer a module without changing its state:
``_fusednorm_backend`` (set by ``fusednorm.convert(model, backend=...)``) and
``_fusednorm_stats_hook`` (set by ``fusednorm.monitor``; called with the statistics the norm
computed anyway).  What the modules share with SyncBatchNorm lives in ``_mixins.py``.
"""
import torch
from torch import Tensor

from . import functional as F
from ._mixins import BatchNormMixin, Fused, backend_of, emit_raw
from .sync_batch_norm import SyncBatchNorm

__all__ = ["LayerNorm", "LayerNorm2d", "RMSNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d",
           "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm"]


class LayerNorm(Fused, torch.nn.LayerNorm):
    def forward(self, input: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._layer_norm("layer_norm", input, self.normalized_shape,
                                                self.weight, self.bias, self.eps, None, False,
                                                backend_of(self), False)
        emit_raw(self, "layer_norm", mean, rstd, None, eps, n)
        return out


class LayerNorm2d(Fused, torch.nn.LayerNorm):
    """LayerNorm over the channels of (N, C, H, W) (any number of spatial dims): timm's
    ``LayerNorm2d`` -- the same base class (``torch.nn.LayerNorm`` with normalized_shape
    (C,)), constructor, parameters and state_dict keys, so a timm checkpoint loads -- on
    ``fusednorm.layer_norm_2d``: NCHW and channels_last read in place, no permute copies."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **kwargs):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._layer_norm_2d("layer_norm_2d", x, self.weight, self.bias,
                                                   self.eps, backend_of(self))
        emit_raw(self, "layer_norm", mean, rstd, None, eps, n)
        return out


class RMSNorm(Fused, torch.nn.RMSNorm):
    def forward(self, x: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._layer_norm("rms_norm", x, self.normalized_shape,
                                                self.weight, None, self.eps, None, False,
                                                backend_of(self), True)
        emit_raw(self, "rms_norm", mean, rstd, None, eps, n)
        return out


class GroupNorm(Fused, torch.nn.GroupNorm):
    def forward(self, input: Tensor) -> Tensor:
        out, mean, rstd, eps, n = F._group_norm("group_norm", input, self.num_groups,
                                                self.weight, self.bias, self.eps, None,
                                                backend_of(self))
        emit_raw(self, "group_norm", mean, rstd, None, eps, n)
        return out


class BatchNorm1d(BatchNormMixin, torch.nn.BatchNorm1d):
    forward = BatchNormMixin.forward


class BatchNorm2d(BatchNormMixin, torch.nn.BatchNorm2d):
    forward = BatchNormMixin.forward


class BatchNorm3d(BatchNormMixin, torch.nn.BatchNorm3d):
    forward = BatchNormMixin.forward


class _InstanceNormMixin(Fused):
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
            backend_of(self), stats="_fusednorm_stats_hook" in self.__dict__)
        emit_raw(self, "instance_norm", mean, rstd, None, eps, n)
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
    torch.nn.SyncBatchNorm: SyncBatchNorm,
}
