"""SynthFaces captions: five phrasings of a face's visible attributes."""

from __future__ import annotations

import numpy as np

_STYLE_WORDS = {"short": "short", "long": "long", "wavy": "long wavy", "bob": "bob-cut", "buzz": "buzz-cut"}


def captions_for(attrs: dict, rng: np.random.Generator) -> list[str]:
    """Five captions in different phrasings; each names the hair colour (or says bald), and the
    expression where attrs has one that is not neutral. The first is the most complete one (the
    test split uses each image's first caption)."""
    female = attrs["gender"] == "female"
    noun, subj = ("woman", "She") if female else ("man", "He")
    hair, style = attrs["hair_color"], _STYLE_WORDS.get(attrs["hair_style"], "")
    eyes, lips, skin = attrs["eye_color"], attrs["lip_color"], attrs["skin_tone"]
    cloth, bg = attrs["cloth_color"], attrs["background_color"]
    extras = []
    if attrs["glasses"]:
        extras.append("glasses")
    if attrs["hat"] and attrs["hat_color"]:
        extras.append(f"a {attrs['hat_color']} hat")
    if attrs["earrings"]:
        extras.append("earrings")
    if attrs["necklace"]:
        extras.append("a necklace")

    def join(items):
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    wearing = join([f"a {cloth} shirt"] + extras)
    if hair is None:
        with_hair = short_hair = "a bald head"
        has_hair = "is bald"
    else:
        with_hair = f"{hair} {style} hair"
        has_hair, short_hair = f"has {hair} {style} hair", f"{hair} hair"
    hair_clause = "is bald" if hair is None else f"with {short_hair}"
    # Eyes or lips can be too small to be visible at low resolution: such attributes are not named.
    eyes_p = f"{eyes} eyes" if eyes else None
    lips_p = f"{lips} lips" if lips else None
    if lips is None:
        lip_phrase = f"has {skin} skin"
    else:
        lip_phrase = f"is wearing {lips} lipstick" if female and lips != "pink" else f"has {lips} lips"
    # A smile goes before the noun; an open mouth or closed eyes is one more "with" feature.
    expression = attrs.get("expression", "neutral")
    smiling = "smiling " if expression == "smiling" else ""
    feature = {"open_mouth": "an open mouth", "closed_eyes": "closed eyes"}.get(expression)
    trail = f"with {feature}" if feature else smiling.strip()  # after a sentence
    face = [p for p in (eyes_p, lips_p, feature) if p]
    look = [p for p in (eyes_p, feature) if p]

    first = (f"A {smiling}{noun} with {join([with_hair, *face, f'{skin} skin'])}, "
             f"wearing {wearing}, on a {bg} background.")
    others = [
        f"{subj} {has_hair} and {lip_phrase}{', ' + trail if trail else ''}.",
        f"A {smiling}{noun} with {join([short_hair, *look, wearing])}.",
        f"Portrait of a {smiling}person with {join([with_hair, *([feature] if feature else []), f'{skin} skin'])} "
        f"on a {bg} background.",
        f"This {smiling}{noun} has {join([f'{skin} skin', *look])}, {hair_clause}, and wears {wearing}.",
        ", ".join([short_hair.removeprefix("a "), *([smiling.strip()] if smiling else []), *face, f"{skin} skin",
                   f"{cloth} shirt", f"{bg} background", *extras]),
    ]
    order = rng.permutation(len(others))
    return [first] + [others[i][0].upper() + others[i][1:] for i in order]

