"""Face-MoGLE: controllable face generation with a FLUX.1 DiT and a mixture of global and local experts."""

__version__ = "0.1.0"
