"""Peak memory of a forward pass run on the meta device: shapes only, no data, no compute.

A conv net (the VAE) or an encoder (T5, CLIP) has no short formula for its peak; running its real
forward on meta tensors and counting the bytes of every live tensor storage gives it in
milliseconds for any size. Attention is counted as a fused kernel would run it (output only, no
S×S score matrix), as PyTorch's scaled_dot_product_attention does on a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created while active and still alive; keeps the peak.

    Frees are seen when a storage's last reference goes: each op first drops expired storages, then
    adds its outputs, so the peak is the moment an op's outputs exist beside everything still held.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        # a view or an in-place result shares an input's storage: nothing new (weights included)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


class _FlashAttention(torch.autograd.Function):
    """What a fused (flash) attention kernel allocates: its output and a float32 log-sum-exp per
    query row; backward keeps q, k, v, the output and the log-sum-exp, and returns dq, dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention():
    """Run scaled_dot_product_attention as a fused kernel allocates (no S×S score matrix): the
    meta device would otherwise take the math path. Patched on torch.nn.functional, where our
    code, diffusers and transformers look it up at call time (a torch-function mode would not
    reach the recomputation of gradient checkpointing, which runs inside the backward)."""
    real = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return _FlashAttention.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def meta_peak(fn, *args, grad: bool = False, **kwargs) -> int:
    """Peak bytes of the tensors `fn(*args, **kwargs)` allocates (meta module and inputs), above
    what existed before. `grad`: run with autograd on (fn then typically ends with a backward)."""
    tracker = LiveBytes()
    with torch.set_grad_enabled(grad), fused_attention(), tracker:
        out = fn(*args, **kwargs)
    del out
    return tracker.peak
