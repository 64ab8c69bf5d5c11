"""Who each image of a data set shows: {image id: identity}, for identity conditioning (issue 31).

Two sources, chosen by `data.identity_file`:
- None: SynthFaces' attributes.json in the data root, whose entries carry "identity" (sets made with
  `make_synthfaces.py --identities N --per_identity K`);
- a CelebA `identity_CelebA.txt` (lines "000001.jpg 2880"): MM-CelebA-HQ image i is CelebA image
  orig_file of CelebA-HQ-to-CelebA-mapping.txt (header "idx orig_idx orig_file", rows "0 119613 119614.jpg"),
  looked up beside the identity file, then in the data root.
Every malformed line is one error naming the file, the line number and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

MAPPING_NAME = "CelebA-HQ-to-CelebA-mapping.txt"
MAPPING_HEADER = ("idx", "orig_idx", "orig_file")


class IdentityFileError(ValueError):
    """An identity source is missing or malformed (the message names the file and line)."""


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IdentityFileError(f"identity file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise IdentityFileError(f"{path}: cannot be read as text ({err})") from None


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def read_celeba_identities(identity_file, mapping_file) -> dict[int, int]:
    """{MM-CelebA-HQ id (0..29999): CelebA identity} from identity_CelebA.txt and the CelebA-HQ mapping."""
    identity_file, mapping_file = Path(identity_file), Path(mapping_file)
    person: dict[str, int] = {}
    for n, line in enumerate(_lines(identity_file), 1):
        if not line.strip():
            continue
        parts = line.split()
        who = _int(parts[1]) if len(parts) == 2 else None
        if who is None or not parts[0].lower().endswith(".jpg"):
            raise IdentityFileError(f"{identity_file} line {n}: expected '<image>.jpg <identity number>' "
                                    f"(e.g. '000001.jpg 2880'), got {line.strip()[:80]!r}")
        if parts[0] in person:
            raise IdentityFileError(f"{identity_file} line {n}: {parts[0]} is listed twice")
        person[parts[0]] = who
    lines = _lines(mapping_file)
    if not lines or tuple(lines[0].split()) != MAPPING_HEADER:
        got = lines[0].strip()[:80] if lines else "an empty file"
        raise IdentityFileError(f"{mapping_file} line 1: expected the header '{' '.join(MAPPING_HEADER)}', got {got!r}")
    out: dict[int, int] = {}
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split()
        idx = _int(parts[0]) if len(parts) == 3 else None
        if idx is None or _int(parts[1]) is None or not parts[2].lower().endswith(".jpg"):
            raise IdentityFileError(f"{mapping_file} line {n}: expected '<idx> <orig_idx> <orig_file>.jpg' "
                                    f"(e.g. '0 119613 119614.jpg'), got {line.strip()[:80]!r}")
        if idx in out:
            raise IdentityFileError(f"{mapping_file} line {n}: idx {idx} is listed twice")
        if parts[2] not in person:
            raise IdentityFileError(f"{mapping_file} line {n}: {parts[2]} has no identity in {identity_file}")
        out[idx] = person[parts[2]]
    if not out:
        raise IdentityFileError(f"{mapping_file}: no rows after the header")
    return out


def _synthfaces_identities(root: Path) -> dict[int, int]:
    path = root / "attributes.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityFileError(f"{path} not found: set data.identity_file (CelebA's identity_CelebA.txt) or make "
                                "the data with make_synthfaces.py --identities N --per_identity K") from None
    except (OSError, ValueError) as err:
        raise IdentityFileError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(entries, dict):
        raise IdentityFileError(f"{path}: expected a mapping of image id to attributes")
    out = {}
    for key, attrs in entries.items():
        who = attrs.get("identity") if isinstance(attrs, dict) else None
        if not str(key).isdigit() or not isinstance(who, int) or isinstance(who, bool):
            raise IdentityFileError(f"{path}: entry {str(key)[:40]!r} has no integer \"identity\"; this set was made "
                                    "without identities (make_synthfaces.py --identities N --per_identity K)")
        out[int(key)] = who
    return out


def read_identities(data_root, identity_file=None) -> dict[int, int]:
    """{image id: identity} of the data set in `data_root`: from `identity_file` (CelebA's
    identity_CelebA.txt, used as given, else under data_root) with the CelebA-HQ mapping beside it or in
    data_root; without one, from the SynthFaces attributes.json in data_root."""
    root = Path(data_root)
    if identity_file is None:
        return _synthfaces_identities(root)
    path = Path(identity_file)
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        raise IdentityFileError(f"data.identity_file not found: {identity_file} (also looked in {root})")
    places = [path.parent / MAPPING_NAME, root / MAPPING_NAME]
    mapping = next((p for p in places if p.is_file()), None)
    if mapping is None:
        raise IdentityFileError(f"{MAPPING_NAME} not found beside {path} or in {root}: put CelebA-HQ's mapping "
                                "file in one of them")
    return read_celeba_identities(path, mapping)
