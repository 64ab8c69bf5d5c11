import os

# Tests never reach a hub: everything they use is built in code or made by the project.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbone():
    from face_mogle.models.builder import build_tiny_backbone

    return build_tiny_backbone()
