"""Text in images: Debian's Tesseract (``tesseract-ocr``) through pytesseract, on a pool.

Each page is one ``tesseract`` process, so the pages of a batch are read in parallel by
``ocr.workers`` threads that each wait on their own process (0 = one per core). Every
process is held to one OpenMP thread: Tesseract's own threading splits only some stages
of one page, and with one page per core the extra threads would only contend.

Pages arrive as the decode policy left them (shrunk to ``decode.max_side``); word and
line boxes are mapped back to the submitted image's pixels by the scale the decoder
recorded (``consumers/pipeline/decode.py``'s ``SOURCE_SIZE``). A missing binary or language pack
fails ``load`` with one line that says what to install.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from consumers.config.settings import OcrSettings, Settings, TaskSettings
from consumers.models.encoder import Encoder
from consumers.ops.threads import named_pool
from consumers.pipeline.decode import SOURCE_SIZE
from consumers.pipeline.item_errors import ModelLoadError
from schemas.events import Box, OcrLine, OcrText, OcrWord

ENGINE = "tesseract"
INSTALL = "apt-get install tesseract-ocr tesseract-ocr-eng (make install does, as root)"
LineKey = tuple[int, int, int]  # (block, paragraph, line) in Tesseract's layout


@dataclass(frozen=True)
class Page:
    """One decoded image, grayscale, and the source pixels per decoded pixel (x, y)."""

    image: Image.Image
    scale: tuple[float, float]
    source: tuple[int, int]


def page_of(image: Image.Image) -> Page:
    width, height = image.info.get(SOURCE_SIZE, image.size)
    scale = (width / image.width, height / image.height)
    return Page(image.convert("L"), scale, (width, height))


def source_box(page: Page, left: int, top: int, width: int, height: int) -> Box:
    """A decoded-pixel box in the submitted image's pixels, inside its bounds."""
    sx, sy = page.scale
    x, y = min(round(left * sx), page.source[0]), min(round(top * sy), page.source[1])
    w = min(max(1, round(width * sx)), page.source[0] - x)
    h = min(max(1, round(height * sy)), page.source[1] - y)
    return x, y, w, h


def layout(data: dict[str, list[Any]], page: Page, language: str, min_conf: float) -> OcrText:
    """Tesseract's word table (``image_to_data``) as lines of words, blocks apart."""
    lines: dict[LineKey, list[OcrWord]] = {}
    for i, text in enumerate(data["text"]):
        conf = float(data["conf"][i])
        if int(data["level"][i]) != 5 or not str(text).strip() or conf < 100 * min_conf:
            continue
        left, top, width, height = (int(data[k][i]) for k in ("left", "top", "width", "height"))
        bbox = source_box(page, left, top, width, height)
        word = OcrWord(text=str(text).strip(), bbox=bbox, confidence=conf / 100)
        key = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        lines.setdefault(key, []).append(word)
    built = [(key[0], _line(words)) for key, words in lines.items()]
    blocks: dict[int, list[str]] = {}
    for block, line in built:
        blocks.setdefault(block, []).append(line.text)
    text = "\n\n".join("\n".join(texts) for texts in blocks.values())
    return OcrText(text=text, language=language, lines=[line for _, line in built])


def _line(words: list[OcrWord]) -> OcrLine:
    x0 = min(w.bbox[0] for w in words)
    y0 = min(w.bbox[1] for w in words)
    x1 = max(w.bbox[0] + w.bbox[2] for w in words)
    y1 = max(w.bbox[1] + w.bbox[3] for w in words)
    return OcrLine(
        text=" ".join(w.text for w in words),
        bbox=(x0, y0, x1 - x0, y1 - y0),
        confidence=sum(w.confidence for w in words) / len(words),
        words=words,
    )


class OcrEncoder(Encoder):
    """Not a tensor encoder: ``read`` takes whole pages (of any size) and returns text."""

    name = "ocr"

    def __init__(self, task: TaskSettings, settings: Settings) -> None:
        super().__init__(task, settings)
        self.options = task if isinstance(task, OcrSettings) else OcrSettings()
        self.device = torch.device("cpu")
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> None:
        if self.options.model != ENGINE:
            raise ModelLoadError(f"ocr: unknown engine {self.options.model!r} (known: {ENGINE})")
        version = tesseract_version()
        missing = set(self.options.language.split("+")) - set(installed_languages())
        if missing:
            packs = " ".join(f"tesseract-ocr-{lang}" for lang in sorted(missing))
            raise ModelLoadError(
                f"ocr: tesseract has no {sorted(missing)} data: apt-get install {packs}"
            )
        # Read by each tesseract process's OpenMP runtime (this process's is started already).
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        self.model_name = f"{ENGINE}-{version}"
        self._pool = named_pool("ocr", self.workers)

    @property
    def workers(self) -> int:
        return self.options.workers or os.cpu_count() or 1

    def read(self, pages: Sequence[Page]) -> list[OcrText]:
        """Every page's text, ``workers`` pages at a time; blocking (run it in a thread)."""
        if self._pool is None:
            raise RuntimeError("OcrEncoder.load() has not been called")
        return list(self._pool.map(self.read_page, pages))

    def read_page(self, page: Page) -> OcrText:
        import pytesseract

        data = pytesseract.image_to_data(
            page.image,
            lang=self.options.language,
            config=f"--psm {self.options.page_segmentation}",
            output_type=pytesseract.Output.DICT,
            timeout=self.options.timeout_s,
        )
        return layout(data, page, self.options.language, self.options.min_confidence)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise TypeError("OCR reads whole pages of any size: use page_of() and read()")

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise TypeError("OCR has no batched tensor call: use read()")


def tesseract_version() -> str:
    import pytesseract

    try:
        return str(pytesseract.get_tesseract_version())
    except (pytesseract.TesseractNotFoundError, OSError) as err:
        raise ModelLoadError(f"ocr: the tesseract binary is not installed: {INSTALL}") from err


def installed_languages() -> list[str]:
    import pytesseract

    return list(pytesseract.get_languages(config=""))
