"""The two paths of a call into a backend, one module per norm.

Eager (``<norm>.eager``): a ``torch.autograd.Function`` per norm whose forward and backward
call the backend's functions directly -- and, when nothing needs a gradient, the backend's
forward alone, with no autograd bookkeeping.  This is the path of every call that is not
being traced: it costs what the validation and the launch cost and nothing more (the
``torch.library.custom_op`` boundary with ``register_autograd`` costs several times more per
call in eager mode: pytorch/pytorch#176592, #177109).

Traced (``<norm>.traced``): the ``torch.library`` custom ops ``fusednorm::<norm>_fwd`` /
``_bwd`` taking the backend's name as a string, with ``register_fake`` and
``register_autograd``.  torch.compile, export and opcheck see only these: an opaque op Dynamo
does not trace into, so ``fullgraph=True`` holds for every backend.  Absent tensors cross the
op boundary as empty tensors (custom ops cannot return None) and are turned back into None.

``fusednorm.functional`` picks the path with ``torch.compiler.is_compiling()``.  Both paths
run the same two functions per norm (``fwd`` and ``bwd`` below), so their outputs,
statistics and gradients are bitwise the same (tests/test_paths.py).
"""
from . import batch_norm, group_norm, layer_norm, layer_norm_2d  # noqa: F401  (registers the ops)
