"""The memory planner: what a config needs on a GPU, predicted before anything loads.

    python -m face_mogle.memory --config configs/face-mogle.yaml --mode sample --gpu_gb 24
"""

from .components import PlannerError
from .plan import GIB, Plan, Setting, plan


def one_line(p: Plan) -> str:
    """The prediction train.py / test.py print on CUDA."""
    s = p.best or min(p.settings, key=lambda s: s.peak)
    return (f"memory plan: {p.mode} {p.size}² batch {p.batch}: this config needs about "
            f"{p.current.peak / GIB:.1f} GiB peak; cheapest setting that fits: "
            + (f"{p.best.label()} ({p.best.peak / GIB:.1f} GiB)" if p.best else f"none (least: {s.label()}, {s.peak / GIB:.1f} GiB)"))


__all__ = ["PlannerError", "Plan", "Setting", "plan", "one_line", "GIB"]


def cuda_lines(cfg, mode: str, device=None, **kwargs):
    """(prediction line, function giving the measured-peak line) when `device` is CUDA, else
    (None, None). The prediction is advice: a planner problem is one line, never an error."""
    import torch

    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None, None
    try:
        gpu_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
        line = one_line(plan(cfg, mode, gpu_gb=gpu_gb, **kwargs))
    except (PlannerError, ValueError, KeyError) as err:
        line = f"memory plan: unavailable ({err})"
    torch.cuda.reset_peak_memory_stats()
    return line, lambda: f"measured peak: {torch.cuda.max_memory_allocated() / GIB:.1f} GiB (torch.cuda.max_memory_allocated)"
