"""Face-MoGLE: controllable face generation with a FLUX.1 DiT and a mixture of global and local experts."""

import logging

# torchao (which diffusers and peft import when it is installed) registers its Enums with torch's
# pytree, and torch >= 2.14 logs a deprecation line for each on every start: noise on every
# command's stderr that says nothing about the user's run
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
