"""Host-side helpers shared by the launchers and their configs."""
import torch


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints.  Not ``triton.cdiv``: in recent Triton that is a constexpr
    function whose argument unwrapping costs microseconds per host call."""
    return -(-a // b)


def f32_empty(like, shape):
    """An uninitialized fp32 tensor on ``like``'s device.  ``like.new_empty(shape)`` when like
    is fp32: passing dtype= to an allocation costs about as much again in argument parsing,
    and these run on every launch."""
    if like.dtype is torch.float32:
        return like.new_empty(shape)
    return like.new_empty(shape, dtype=torch.float32)
