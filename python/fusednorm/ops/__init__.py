"""torch.library custom ops: the single path every backend plugs into.

Each norm has a forward op and a backward op (``fusednorm::<norm>_fwd`` / ``_bwd``) taking
the backend's name as a string argument.  The forward op carries ``register_fake`` and
``register_autograd`` (whose backward calls the backward op), so autograd, opcheck and
torch.compile(fullgraph=True) treat every backend the same way: as an opaque op Dynamo does
not trace into (Triton launches and CUDA calls stay inside it).  Absent tensors cross the op
boundary as empty tensors (custom ops cannot return None) and are turned back into None here.
"""
from . import batch_norm, group_norm, layer_norm  # noqa: F401  (registers the ops)
