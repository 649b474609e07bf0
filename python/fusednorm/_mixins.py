"""What fusednorm.nn's modules and fusednorm.nn.SyncBatchNorm share: the statistics hook,
the per-module backend choice, the repr marker and BatchNorm's forward.

Its own module so that ``nn.py`` and ``sync_batch_norm.py`` both import it and neither
imports the other's internals (``nn`` imports ``SyncBatchNorm`` to list it; nothing imports
back).  Two optional instance attributes steer a module without changing its state:
``_fusednorm_backend`` (set by ``fusednorm.convert(model, backend=...)``) and
``_fusednorm_stats_hook`` (set by ``fusednorm.monitor``; called with the statistics the norm
computed anyway).
"""
from torch import Tensor

from . import functional as F


def emit(module, kind, stats):
    hook = getattr(module, "_fusednorm_stats_hook", None)
    if hook is not None and stats is not None:
        hook(module, kind, {k: (v.detach() if isinstance(v, Tensor) else v)
                            for k, v in stats.items()})


def emit_raw(module, kind, mean, rstd, var, eps, count):
    """Hand the norm's own statistics to the statistics hook, if one is set (the dict is
    built only then: a plain forward pays one attribute lookup)."""
    hook = module.__dict__.get("_fusednorm_stats_hook")
    if hook is not None and rstd is not None:
        emit(module, kind, {"mean": mean, "rstd": rstd, "var": var, "eps": eps,
                            "count": count})


def backend_of(module):
    return module.__dict__.get("_fusednorm_backend")


class Fused:
    """Marks fusednorm's modules in their repr (``LayerNorm(...)`` prints as
    ``fusednorm.LayerNorm(...)``), so a converted model shows what was swapped."""

    def _get_name(self):
        return "fusednorm." + type(self).__name__


class BatchNormMixin(Fused):
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # torch's _BatchNorm.forward bookkeeping, done by the backend: in training with
        # tracked statistics num_batches_tracked is incremented on the device, and
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
            self.eps, backend_of(self), nbt)
        if bn_training:
            emit_raw(self, "batch_norm", mean, rstd, var, eps, n)
        return out
