"""``shapes``: coloured geometric shapes, rendered here from the seed (numpy and Pillow; nothing downloaded).

Reference: ``shapes[?colors=K&shapes=S&size=PX&caption_noise=P]``

- ``colors``: the first K of ``COLORS`` (3 ≤ K ≤ 10, default 8); ``shapes``: the first S of ``SHAPES``
  (3 ≤ S ≤ 8, default 6). One class per (colour, shape): C = K·S (48 by default), class ``c = colour·S + shape``.
- ``size``: the side of the square image in pixels (16 ≤ PX ≤ 512, default 224, the usual encoder input; the
  vision encoder's preprocess resizes anything else, as for every dataset).
- ``caption_noise``: the fraction P ∈ [0, 1] of pairs (exactly ``round(P·N)``, chosen by the seed) whose caption
  names another class (colour and shape of a class drawn uniformly among the other C − 1; size, position and
  background still the image's own). Labels and images are untouched: a data-side control whose direction is
  known (more noise, less alignment).

Within a class, images differ in size (small / medium-sized / large), position (a 3 × 3 grid of regions, jittered
inside its region), background (grey / white / black / beige, among those that contrast with the shape's colour),
a small rotation, a jitter of the colour and Gaussian pixel noise. Each sample's caption comes from one of ten
templates that use its own size, position and background words, so most captions are distinct (METRICS §0).

Held-out groups (METRICS §7 with explicit groups, docs/metrics.md "The shapes dataset"): a colour group is two
classes of one shape whose colours are held out, {(c1, s), (c2, s)}; a shape group is two classes of one colour
whose shapes are held out, {(c, s1), (c, s2)}. A group's map is fitted only on the classes that contain none of its
held-out values (36 of 48 classes for a colour group, 32 for a shape group), so its images are classified between
classes that differ only in a value the map has never seen: a consistent map onto word vectors that carries no
meaning (a random text encoder) sits at chance. The groups are class-disjoint and value-disjoint (every colour and
every shape is held out by at most one group, see ``held_out_groups``): ``⌊K/2⌋ + ⌊S/2⌋`` groups, 7 by default
(G ≥ 5 can reach α = 0.05; ``colors=10&shapes=8`` gives 9).

Run ``python bench/shapes_grid.py docs/shapes.png`` (or ``python -m phasecore.data.shapes --grid <png>``) for a
grid of examples with their captions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from phasecore.data.base import PairedDataset, PairedSample
from phasecore.errors import InvalidReference, InvalidSettings
from phasecore.queries import query_pairs

#: colour name → RGB (0-255); ``colors=K`` takes the first K
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 160, 55),
    "blue": (35, 80, 215),
    "purple": (135, 50, 185),
    "pink": (245, 125, 185),
    "brown": (125, 75, 35),
    "teal": (0, 140, 140),
    "white": (250, 250, 250),
}
#: shape name → other words for it (the templates use both); ``shapes=S`` takes the first S
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "dot"),
    "square": ("box", "block"),
    "triangle": ("wedge", "pyramid"),
    "star": ("sparkle", "asterisk"),
    "hexagon": ("hex", "honeycomb cell"),
    "cross": ("plus sign", "cross mark"),
    "diamond": ("rhombus", "lozenge"),
    "pentagon": ("home plate", "five-sided tile"),
}
#: No two shapes share a word (nor, in MiniLM's WordPiece vocabulary, a word piece), so a held-out shape's words
#: never occur in the captions its map is fitted on: "three-sided shape" for a triangle would share "sided" and
#: "shape" with the hexagon's "six-sided shape", a link a text encoder with random weights can exploit.

#: background name → RGB; a sample draws among those at RGB distance ≥ ``MIN_CONTRAST`` from its colour
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "beige": (225, 212, 180),
}
MIN_CONTRAST = 110.0
#: size word → shape radius as a fraction of the image side
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.14),
    "medium-sized": (0.17, 0.21),
    "large": (0.25, 0.30),
}
#: position words of the 3 × 3 regions, row by row (top to bottom, left to right)
POSITIONS = (
    "in the top left",
    "near the top",
    "in the top right",
    "on the left",
    "in the middle",
    "on the right",
    "in the bottom left",
    "near the bottom",
    "in the bottom right",
)
NOISE_STD = 0.03  # Gaussian pixel noise (images in [0, 1])
COLOR_JITTER = 12  # ± per channel, of 255
MAX_ROTATION = 15.0  # degrees

DEFAULTS: dict[str, Any] = {"colors": 8, "shapes": 6, "size": 224, "caption_noise": 0.0}
_LIMITS = {"colors": (3, len(COLORS)), "shapes": (3, len(SHAPES)), "size": (16, 512)}

#: per-sample caption templates: {a} article + {size}, {color}, {shape}, {alt} and {alt2} (the other words for the
#: shape), {pos} (position words), {bg} (background); ten, of varied wording
TEMPLATES = (
    "{a_size} {size} {color} {shape} {pos}",
    "{a_color} {color} {alt} on {bg}",
    "a picture of {a_color} {color} {shape} on a {bg} background",
    "{a_size} {size} {shape} in {color}, {pos}",
    "there is {a_color} {color} {shape} {pos} of the image",
    "{a_size} {size} {color} {alt} drawn on a {bg} background",
    "a drawing of {a_color} {color} {shape}, {size}, {pos}",
    "{color} {shape} on {bg}, {size}",
    "one {color} {alt2} {pos}, on {bg}",
    "a simple {color} {shape}: {size}, {pos}",
)
#: class caption templates (prototypes t_c, METRICS §7): colour and shape words only, and only words that sample
#: captions hold (a text tower trained on the captions has seen every word of its prototypes)
CLASS_TEMPLATES = (
    "{a_color} {color} {shape}",
    "a picture of {a_color} {color} {shape}",
    "{a_color} {color} {alt}",
    "a drawing of {a_color} {color} {shape}",
    "{a_color} {color} {shape} on a background",
    "a simple {color} {shape}",
    "one {color} {alt2}",
    "an image of {a_color} {color} {shape}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _words(color: str, shape: str) -> dict[str, str]:
    alt, alt2 = SHAPES[shape]
    return {"color": color, "shape": shape, "alt": alt, "alt2": alt2, "a_color": _article(color)}


def class_caption_templates(color: str, shape: str) -> list[str]:
    """The eight attribute-free captions of class (color, shape), for its prototype."""
    return [t.format(**_words(color, shape)) for t in CLASS_TEMPLATES]


def caption_for(template: int, color: str, shape: str, size: str, pos: str, bg: str) -> str:
    """Caption ``TEMPLATES[template]`` of one sample."""
    return TEMPLATES[template].format(**_words(color, shape), size=size, a_size=_article(size), pos=pos, bg=bg)


# --- references ---------------------------------------------------------------------------------------------


def parse_shapes_options(query: str) -> dict[str, Any]:
    """Options of ``shapes?...`` (the part after ``?``), checked; InvalidReference says what would work."""
    options = dict(DEFAULTS)
    for key, value in query_pairs(
        query,
        DEFAULTS,
        unknown=lambda key: f"unknown option {key!r} in dataset reference shapes?{query}; known: "
        f"{', '.join(DEFAULTS)} (e.g. shapes?colors=8&shapes=6&size=224&caption_noise=0.1)",
        twice=lambda key: f"option {key!r} is given twice in dataset reference shapes?{query}",
    ):
        if key == "caption_noise":
            try:
                p = float(value)
            except ValueError:
                p = math.nan
            if not 0.0 <= p <= 1.0:  # also rejects nan
                raise InvalidReference(
                    f"caption_noise={value!r} must be a number in [0, 1] (the fraction of captions from another "
                    "class)"
                )
            options[key] = p
            continue
        low, high = _LIMITS[key]
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            what = {"colors": "colours", "shapes": "shapes", "size": "pixels per side"}[key]
            raise InvalidReference(f"{key}={value!r} must be an integer from {low} to {high} ({what})")
        options[key] = number
    return options


def canonical_shapes_ref(options: dict[str, Any]) -> str:
    """``shapes`` plus the options that differ from their defaults, in a fixed order."""
    parts = []
    for key, default in DEFAULTS.items():
        value = options[key]
        if value != default:
            parts.append(f"{key}={_format(value)}")
    return "shapes" + ("?" + "&".join(parts) if parts else "")


def _format(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


# --- groups -------------------------------------------------------------------------------------------------


def held_out_groups(n_colors: int, n_shapes: int, seed: int, *, tries: int = 64) -> list[dict[str, Any]]:
    """The class-disjoint held-out groups (module docstring), each ``{"classes", "exclude", "held_out"}``:
    ``classes`` the group's two class ids, ``exclude`` every class that contains one of the group's held-out
    values (never fitted; the group's own classes among them), ``held_out`` e.g. ``{"colors": ["purple", "teal"]}``.

    Candidates are every colour pair at one shape and every shape pair at one colour. Taken greedily in a seeded
    order, a candidate joins when its classes are still free and neither of its held-out values is held out by
    another group: every colour and every shape is held out at most once, ``⌊K/2⌋ + ⌊S/2⌋`` groups (7 for 8 × 6).
    Groups that shared a held-out value would not be independent (a value's own effect, e.g. how the map happens
    to place an unseen shape against a random text encoder's vector for its word, enters every group holding it
    out) and the sign-flip test, which counts groups as independent, would decide pairs by chance far more often
    than α. Of ``tries`` seeded orders the one with the most groups wins, then the one closest to as many colour
    as shape groups.
    """
    rng = np.random.default_rng([seed, 7])
    colors, shapes = list(COLORS)[:n_colors], list(SHAPES)[:n_shapes]

    def cls(c: int, s: int) -> int:
        return c * n_shapes + s

    candidates: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
    for s in range(n_shapes):
        for c1 in range(n_colors):
            for c2 in range(c1 + 1, n_colors):
                candidates.append(("colors", (c1, c2), (cls(c1, s), cls(c2, s))))
    for c in range(n_colors):
        for s1 in range(n_shapes):
            for s2 in range(s1 + 1, n_shapes):
                candidates.append(("shapes", (s1, s2), (cls(c, s1), cls(c, s2))))
    best: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
    best_key = (-1, 0)
    for _ in range(tries):
        used_classes: set[int] = set()
        used_values: set[tuple[str, int]] = set()
        chosen = []
        for index in rng.permutation(len(candidates)):
            kind, pair, members = candidates[int(index)]
            values = {(kind, v) for v in pair}
            if used_classes.isdisjoint(members) and used_values.isdisjoint(values):
                used_classes.update(members)
                used_values.update(values)
                chosen.append(candidates[int(index)])
        n_color_groups = sum(kind == "colors" for kind, _, _ in chosen)
        key = (len(chosen), -abs(2 * n_color_groups - len(chosen)))
        if key > best_key:
            best, best_key = chosen, key
    groups: list[dict[str, Any]] = []
    for kind, pair, members in sorted(best, key=lambda g: g[2]):
        if kind == "colors":
            exclude = sorted(cls(c, s) for c in pair for s in range(n_shapes))
            held = {"colors": [colors[c] for c in pair]}
        else:
            exclude = sorted(cls(c, s) for c in range(n_colors) for s in pair)
            held = {"shapes": [shapes[s] for s in pair]}
        groups.append({"classes": list(members), "exclude": exclude, "held_out": held})
    return groups


# --- rendering ----------------------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(k: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(phase + 2 * math.pi * i / k), cy + radius * math.sin(phase + 2 * math.pi * i / k))
            for i in range(k)
        ]

    up = -math.pi / 2 + angle
    if shape == "square":
        return ring(4, r, math.pi / 4 + angle)
    if shape == "triangle":
        return ring(3, r, up)
    if shape == "hexagon":
        return ring(6, r, angle)
    if shape == "pentagon":
        return ring(5, r, up)
    if shape == "diamond":
        pts = ring(4, r, up)
        return [(cx + 0.65 * (x - cx), y) for x, y in pts]  # a rhombus, narrower than tall
    if shape == "star":
        outer, inner = ring(5, r, up), ring(5, 0.42 * r, up + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        w = 0.33 * r
        base = [
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)
        ]  # fmt: skip
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in base]
    raise ValueError(f"unknown shape {shape!r}")


def render(
    color_rgb: tuple[int, int, int],
    shape: str,
    *,
    size_px: int,
    radius: float,
    center: tuple[float, float],
    angle: float,
    background: tuple[int, int, int],
    noise: np.ndarray,
) -> np.ndarray:
    """One image ``(size_px, size_px, 3) float32 in [0, 1]``: drawn at 4× (2× above 64 px) and downsampled
    (anti-aliased edges), plus ``noise (size_px, size_px, 3)``, clipped."""
    scale = 4 if size_px <= 64 else 2
    big = size_px * scale
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = center[0] * scale, center[1] * scale, radius * scale
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color_rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, math.radians(angle)), fill=color_rgb)
    small = canvas.resize((size_px, size_px), Image.Resampling.BOX)
    image = np.asarray(small, dtype=np.float32) / np.float32(255) + noise.astype(np.float32)
    clipped: np.ndarray = np.clip(image, 0.0, 1.0).astype(np.float32)
    return clipped


def _draw_sample(rng: np.random.Generator, color: str, shape: str, size_px: int) -> tuple[np.ndarray, dict[str, str]]:
    """Render one sample of class (color, shape) with ``rng``; returns the image and its attribute words."""
    size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
    low, high = SIZES[size_word]
    radius = float(rng.uniform(low, high)) * size_px
    region = int(rng.integers(len(POSITIONS)))
    row, col = divmod(region, 3)
    span = size_px - 2 * radius  # centres keep the shape inside the image
    cx = radius + span * (col + float(rng.uniform(0.15, 0.85))) / 3
    cy = radius + span * (row + float(rng.uniform(0.15, 0.85))) / 3
    rgb = np.array(COLORS[color], dtype=np.float64)
    options = [b for b, v in BACKGROUNDS.items() if np.linalg.norm(rgb - np.array(v)) >= MIN_CONTRAST]
    bg = options[int(rng.integers(len(options)))]
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    fill = tuple(int(v) for v in np.clip(rgb + jitter, 0, 255))
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    noise = rng.normal(0.0, NOISE_STD, size=(size_px, size_px, 3))
    image = render(
        fill,  # type: ignore[arg-type]  # three ints (RGB); mypy sees tuple[int, ...]
        shape,
        size_px=size_px,
        radius=radius,
        center=(cx, cy),
        angle=angle,
        background=BACKGROUNDS[bg],
        noise=noise,
    )
    return image, {"size": size_word, "pos": POSITIONS[region], "bg": bg}


def _draw_labels(n_classes: int, n: int, seed: int) -> tuple[np.random.Generator, np.ndarray]:
    """The sample's labels, balanced (± 1) and shuffled, and the generator that drew them (it goes on to draw
    templates, caption noise and images)."""
    if n < 1:
        raise InvalidSettings(f"N={n} pairs requested; N must be at least 1")
    rng = np.random.default_rng(seed)
    base, remainder = divmod(n, n_classes)
    quota = np.full(n_classes, base)
    quota[rng.choice(n_classes, remainder, replace=False)] += 1
    return rng, rng.permutation(np.repeat(np.arange(n_classes), quota))


def shapes_sample_labels(query: str = "", *, n: int, seed: int) -> np.ndarray:
    """The labels ``(n,)`` of ``load_shapes_pairs(query, n=n, seed=seed)``, nothing rendered (the API's
    request check); the same errors for bad options or N."""
    options = parse_shapes_options(query)
    return _draw_labels(options["colors"] * options["shapes"], n, seed)[1]


def load_shapes_pairs(query: str = "", *, n: int, seed: int) -> PairedDataset:
    """``n`` pairs of ``shapes?<query>``, balanced over the C classes (± 1, the remainder's classes drawn by
    the seed), in a seeded shuffled order. Everything (labels, images, captions, noise, groups) is a function
    of ``(options, n, seed)``: the same arguments give byte-identical images. Ids ``shapes:<i>``.
    """
    options = parse_shapes_options(query)
    n_colors, n_shapes, size_px = options["colors"], options["shapes"], options["size"]
    colors, shapes = list(COLORS)[:n_colors], list(SHAPES)[:n_shapes]
    class_names = [f"{c} {s}" for c in colors for s in shapes]
    n_classes = len(class_names)
    rng, labels = _draw_labels(n_classes, n, seed)
    templates = rng.integers(0, len(TEMPLATES), size=n)
    n_noisy = int(round(options["caption_noise"] * n))
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.permutation(n)[:n_noisy]] = True
    offsets = rng.integers(1, n_classes, size=n)  # another class: label + offset (mod C), uniform over the others
    caption_class = np.where(noisy, (labels + offsets) % n_classes, labels)

    samples = []
    for i in range(n):
        c, s = divmod(int(labels[i]), n_shapes)
        image, words = _draw_sample(np.random.default_rng([seed, 1, i]), colors[c], shapes[s], size_px)
        cc, cs = divmod(int(caption_class[i]), n_shapes)
        caption = caption_for(int(templates[i]), colors[cc], shapes[cs], **words)
        samples.append(PairedSample(sample_id=f"shapes:{i}", image=image, caption=caption, label=int(labels[i])))
    class_captions = {
        k: class_caption_templates(colors[k // n_shapes], shapes[k % n_shapes]) for k in range(n_classes)
    }
    return PairedDataset(
        name=canonical_shapes_ref(options),
        samples=samples,
        class_names=class_names,
        class_captions=class_captions,
        seed=seed,
        extra={
            "options": options,
            "caption_noise": options["caption_noise"],
            "n_noisy_captions": n_noisy,
            "caption_classes": caption_class.tolist() if n_noisy else None,
        },
        outcome_groups=held_out_groups(n_colors, n_shapes, seed),
    )


# --- example grid -------------------------------------------------------------------------------------------


def save_grid(path: str, *, ref_query: str = "size=128", n: int = 12, seed: int = 0, columns: int = 4) -> None:
    """A PNG grid of ``n`` samples of ``shapes?<ref_query>`` with their captions underneath."""
    import textwrap

    data = load_shapes_pairs(ref_query, n=n, seed=seed)
    side = data.samples[0].image.shape[0]
    cell_w, text_h = max(side, 220), 48
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * (side + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, sample in enumerate(data.samples):
        r, c = divmod(k, columns)
        x0, y0 = c * cell_w, r * (side + text_h)
        tile = Image.fromarray((sample.image * 255).round().astype(np.uint8))
        sheet.paste(tile, (x0 + (cell_w - side) // 2, y0))
        lines = textwrap.wrap(f"[{data.class_names[sample.label]}] {sample.caption}", width=36)
        draw.multiline_text((x0 + 4, y0 + side + 2), "\n".join(lines[:3]), fill=(0, 0, 0), spacing=1)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m phasecore.data.shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help="where to write the PNG grid of examples")
    parser.add_argument("--options", default="size=128", help="shapes options, e.g. 'size=128&colors=8'")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_grid(args.grid, ref_query=args.options, n=args.n, seed=args.seed)
    print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
