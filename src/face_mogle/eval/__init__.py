"""Evaluation suite: FID/KID (clean-fid), CLIP score, CMMD, DINO structure distance, ImageReward and
label-map mIoU between generated faces and real ones, all from local weight folders.

Run it with `python -m face_mogle.eval --help`. Each metric family lives in its own module
(fid, clip_score, cmmd, dino, image_reward, miou); `cli` wires them to files on disk.
"""

from face_mogle.eval.errors import EvalError

__all__ = ["EvalError"]
