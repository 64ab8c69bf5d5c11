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
