"""Caption templates per class.

One caption per class would make the text kernel rank ≤ C (METRICS §0), so each class gets ten templates
of varied wording; each sample draws one with the dataset seed.
"""

from __future__ import annotations

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_HANDWRITTEN = (
    "a photo of the number {word}",
    "a handwritten {numeral}",
    "the digit {word} written by hand",
    "a scanned image of a handwritten {word}",
    "a low-resolution picture of the digit {numeral}",
    "the number {numeral}, drawn in ink",
    "a blurry {word}",
    "someone wrote the number {word}",
    "a pixelated digit: {numeral}",
    "a black and white image of a {word}",
)

_HOUSE_NUMBER = (
    "a photo of the number {word}",
    "the digit {numeral} on a house",
    "a street number {numeral}",
    "a house number digit {word}",
    "a cropped photo of the digit {word}",
    "the number {word} on a sign",
    "a {numeral} from a house number",
    "a close-up of the digit {numeral}",
    "a blurry photo of a {word}",
    "the digit {word} painted on a wall",
)

_OBJECT = (
    "a photo of {a} {name}",
    "a blurry photo of {a} {name}",
    "a low-resolution photo of the {name}",
    "a close-up photo of {a} {name}",
    "a small picture of {a} {name}",
    "a cropped photo of the {name}",
    "{a} {name} in the picture",
    "an image showing {a} {name}",
    "a pixelated photo of the {name}",
    "a bright photo of {a} {name}",
)


def handwritten_digit_captions(digit: int) -> list[str]:
    """Templates for a handwritten digit 0-9 (scikit-learn digits)."""
    return [t.format(word=DIGIT_WORDS[digit], numeral=digit) for t in _HANDWRITTEN]


def house_number_captions(digit: int) -> list[str]:
    """Templates for a photographed house-number digit 0-9 (SVHN)."""
    return [t.format(word=DIGIT_WORDS[digit], numeral=digit) for t in _HOUSE_NUMBER]


def object_captions(class_name: str) -> list[str]:
    """Templates for an object class such as ``airplane`` or ``aquarium_fish`` (CIFAR)."""
    name = class_name.replace("_", " ")
    article = "an" if name[0] in "aeiou" else "a"
    return [t.format(a=article, name=name) for t in _OBJECT]
