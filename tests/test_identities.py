"""data.identity_file: MM-CelebA-HQ ids to CelebA identities (files of the real layout, written here),
SynthFaces identities from attributes.json, one-line errors naming file and line, the config key."""

import json

import pytest

from face_mogle.config import ConfigError, load_config
from face_mogle.data.identities import IdentityFileError, read_celeba_identities, read_identities

IDENTITY = "000001.jpg 2880\n000002.jpg 2937\n119614.jpg 7\n119615.jpg 7\n"
MAPPING = "idx orig_idx orig_file\n0 119613 119614.jpg\n1 1 000002.jpg\n2 119614 119615.jpg\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_celeba_identities_beside_the_identity_file(tmp_path):
    ident = write(tmp_path / "celeba" / "identity_CelebA.txt", IDENTITY)
    write(tmp_path / "celeba" / "CelebA-HQ-to-CelebA-mapping.txt", MAPPING)
    got = read_identities(tmp_path / "root", ident)
    assert got == {0: 7, 1: 2937, 2: 7}  # ids 0 and 2 are the same person
    assert read_celeba_identities(ident, tmp_path / "celeba" / "CelebA-HQ-to-CelebA-mapping.txt") == got


def test_mapping_in_data_root_and_identity_file_relative_to_root(tmp_path):
    root = tmp_path / "mmcelebahq"
    write(root / "identity_CelebA.txt", IDENTITY)
    write(root / "CelebA-HQ-to-CelebA-mapping.txt", MAPPING)
    assert read_identities(root, "identity_CelebA.txt") == {0: 7, 1: 2937, 2: 7}
    elsewhere = write(tmp_path / "other" / "identity_CelebA.txt", IDENTITY)  # mapping only in the root
    assert read_identities(root, elsewhere)[1] == 2937


@pytest.mark.parametrize("which, text, needle", [
    ("ident", "000001.jpg 2880\n000002.jpg\n", "identity_CelebA.txt line 2: expected '<image>.jpg <identity number>'"),
    ("ident", "000001.jpg x\n", "line 1: expected '<image>.jpg <identity number>'"),
    ("ident", IDENTITY + "000001.jpg 3\n", "line 5: 000001.jpg is listed twice"),
    ("map", "0 119613 119614.jpg\n", "line 1: expected the header 'idx orig_idx orig_file'"),
    ("map", "idx orig_idx orig_file\n0 119613\n", "line 2: expected '<idx> <orig_idx> <orig_file>.jpg'"),
    ("map", "idx orig_idx orig_file\n0 1 000001.jpg\n0 2 000002.jpg\n", "line 3: idx 0 is listed twice"),
    ("map", "idx orig_idx orig_file\n0 5 000009.jpg\n", "line 2: 000009.jpg has no identity in"),
    ("map", "idx orig_idx orig_file\n", "no rows after the header"),
])
def test_malformed_lines_name_file_and_line(tmp_path, which, text, needle):
    ident = write(tmp_path / "identity_CelebA.txt", text if which == "ident" else IDENTITY)
    write(tmp_path / "CelebA-HQ-to-CelebA-mapping.txt", text if which == "map" else MAPPING)
    with pytest.raises(IdentityFileError, match=needle) as err:
        read_identities(tmp_path, ident)
    assert "\n" not in str(err.value)
    assert ("identity_CelebA.txt" if which == "ident" else "CelebA-HQ-to-CelebA-mapping.txt") in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(IdentityFileError, match="data.identity_file not found: nope.txt"):
        read_identities(tmp_path, "nope.txt")
    ident = write(tmp_path / "a" / "identity_CelebA.txt", IDENTITY)
    with pytest.raises(IdentityFileError, match="CelebA-HQ-to-CelebA-mapping.txt not found beside"):
        read_identities(tmp_path / "root", ident)
    with pytest.raises(IdentityFileError, match="attributes.json not found: set data.identity_file"):
        read_identities(tmp_path / "root")


def test_synthfaces_identities_from_attributes(tmp_path):
    from face_mogle.data.synthfaces import write_dataset

    out = write_dataset(tmp_path / "ids", None, 32, seed=0, progress=False, identities=3, per_identity=2)
    assert read_identities(out) == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
    plain = write_dataset(tmp_path / "plain", 2, 32, seed=0, progress=False)
    with pytest.raises(IdentityFileError, match="entry '0' has no integer \"identity\""):
        read_identities(plain)
    write(tmp_path / "bad" / "attributes.json", "{")
    with pytest.raises(IdentityFileError, match="not readable JSON"):
        read_identities(tmp_path / "bad")
    assert json.loads((out / "attributes.json").read_text())["5"]["identity"] == 2


def test_config_key():
    assert load_config(None).data.identity_file is None
    cfg = load_config(None, ["data.identity_file=/data/celeba/identity_CelebA.txt"])
    assert cfg.data.identity_file == "/data/celeba/identity_CelebA.txt"
    with pytest.raises(ConfigError, match="data.identity_file"):
        load_config(None, ["data.identity_file=''"])
    with pytest.raises(ConfigError, match="data.identity_file"):
        load_config(None, ["data.identity_file=3"])
