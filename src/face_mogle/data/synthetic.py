"""Former home of SynthFaces, kept so that `face_mogle.data.synthetic` imports go on working: the code
lives in the package `face_mogle.data.synthfaces` (one module per role)."""

from face_mogle.data.synthfaces import *  # noqa: F401,F403
from face_mogle.data.synthfaces import __all__  # noqa: F401
