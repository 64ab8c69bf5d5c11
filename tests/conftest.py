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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A sampling-ready run folder on the tiny backbone (random LoRA and MoGLE weights)."""
    from sampling_helpers import make_run

    return make_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="session")
def pipe(tiny_run):
    from face_mogle.pipeline import FaceMoGLEPipeline

    return FaceMoGLEPipeline.from_run(tiny_run, device="cpu")
