"""Pictures with known text, rendered with PIL from Debian's DejaVu fonts (fonts-dejavu-core).

Signs, receipts and product labels, some turned a few degrees or covered in noise: the
OCR tests measure character accuracy on them, the demo ingests them beside the photos,
and ``imagestream bench ocr`` times the ocr task on them. ``TextImage.text`` is what a
reader should find (lines joined by newlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = Path("/usr/share/fonts/truetype/dejavu")
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class TextImage:
    name: str
    image: Image.Image
    text: str


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONTS / f"{name}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(path), size)


def render(
    lines: list[str],
    face: str,
    size: int,
    *,
    ink: Colour = (0, 0, 0),
    paper: Colour = (255, 255, 255),
    margin: int = 40,
) -> Image.Image:
    """``lines`` drawn top to bottom with 40% leading, on a canvas that fits them."""
    typeface = font(face, size)
    widths = [int(typeface.getlength(line)) for line in lines]
    step = int(size * 1.4)
    canvas = Image.new("RGB", (max(widths) + 2 * margin, step * len(lines) + 2 * margin), paper)
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((margin, margin + n * step), line, font=typeface, fill=ink)
    return canvas


def rotated(image: Image.Image, degrees: float, paper: Colour = (255, 255, 255)) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=paper)


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    pixels += np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


SIGN = ["HEDGEHOG CROSSING", "SLOW DOWN"]
RECEIPT = [
    "CORNER GROCERY",
    "Apples 2 x 0.80   1.60",
    "Bread             2.45",
    "Milk 1L           1.19",
    "TOTAL             5.24",
    "Thank you for shopping",
]
LABEL = ["Organic Lavender Honey", "Net weight 250 g", "Best before 2027"]
MENU = ["Breakfast served daily", "Pancakes with maple syrup"]


def samples() -> list[TextImage]:
    """One of each kind; the last two turned by 4 degrees and covered in noise."""
    yellow, green = (250, 210, 40), (30, 90, 50)
    made = [
        ("sign", render(SIGN, "DejaVuSans-Bold", 64, paper=yellow), SIGN),
        ("receipt", render(RECEIPT, "DejaVuSansMono", 28), RECEIPT),
        ("label", render(LABEL, "DejaVuSerif", 36, ink=(255, 255, 255), paper=green), LABEL),
        ("menu-rotated", rotated(render(MENU, "DejaVuSans", 40), 4), MENU),
        ("receipt-noisy", noisy(render(RECEIPT[:3], "DejaVuSansMono", 32), 25), RECEIPT[:3]),
    ]
    return [TextImage(name, image, "\n".join(lines)) for name, image, lines in made]


def char_accuracy(expected: str, found: str) -> float:
    """1 - (character edit distance / expected length), with whitespace runs as one space."""
    a, b = " ".join(expected.split()), " ".join(found.split())
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return max(0.0, 1.0 - previous[-1] / max(1, len(a)))
