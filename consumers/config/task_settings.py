"""Per-task sections of the settings tree (``consumers/config/settings.py`` is the root).

One ``TaskSettings`` subclass per task (its model, device, consumer group and batching),
and the sections that go with them: text search, zero-shot label sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

RUNTIME_DIR = Path(".imagestream")  # runtime files: stack endpoints, logs, classifier heads


class TaskSettings(BaseModel):
    """What every task has: a consumer group and its batching."""

    enabled: bool = True
    model: str
    fallback_model: str | None = Field(
        default=None, description="Used (with one warning line) when `model` cannot be loaded."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, ...")
    group_id: str | None = Field(
        default=None, description="Default: imagestream-<task>, after KAFKA__TOPIC_PREFIX."
    )
    max_records: int = Field(default=32, ge=1, description="Largest micro-batch.")
    batch_timeout_ms: int = Field(default=200, ge=1)
    collection: str


# The precisions each engine runs (why: consumers/models/engines.py).
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


def check_supported(engine: str, precision: str) -> None:
    if precision not in ENGINE_PRECISIONS[engine]:
        allowed = ", ".join(ENGINE_PRECISIONS[engine])
        raise ValueError(f"engine {engine} runs precision {allowed}, not {precision}")


class EngineSettings(BaseModel):
    """How a task's model runs on a CPU (``consumers/models/engines.py``): torch eager,
    or a graph exported once and run by ONNX Runtime or OpenVINO, in a precision."""

    engine: Literal["torch", "onnx", "openvino"] = Field(
        default="torch", description="torch, onnx (ONNX Runtime) or openvino; CPU only."
    )
    precision: Literal["fp32", "bf16", "int8"] = Field(
        default="fp32",
        description="fp32; bf16 (torch autocast, OpenVINO's bf16 hint); int8 (dynamic "
        "quantization: onnx, openvino).",
    )

    @model_validator(mode="after")
    def _engine_supports_precision(self) -> EngineSettings:
        check_supported(self.engine, self.precision)
        return self


class ClipSettings(EngineSettings, TaskSettings):
    model: str = "openai/clip-vit-base-patch32"
    collection: str = "clip_images"


class PeopleSettings(BaseModel):
    """Faces grouped into persons as they arrive (consumers/people/, docs/faces.md)."""

    enabled: bool = Field(default=True, description="Assign each face a person_id.")
    min_faces: int = Field(
        default=3, ge=1, description="Similar faces (this one included) that found a person."
    )
    threshold: float | None = Field(
        default=None,
        gt=-1,
        lt=1,
        description="Cosine similarity at or above which two faces are the same person; "
        "unset = DeepFace's verification threshold for the model (Dlib: 0.93).",
    )
    neighbours: int = Field(
        default=20, ge=1, description="Nearest faces looked at per face, whatever top_k asks."
    )
    collection: str = Field(default="people", description="Names, merges and removals.")


class FaceSettings(TaskSettings):
    """Every face of every image: DeepFace detection, then one batched recognition call."""

    enabled: bool = Field(
        default=False, description="Off unless enabled (`imagestream up` and `make run` enable it)."
    )
    model: str = Field(
        default="GhostFaceNet",
        description="A DeepFace recognition model (GhostFaceNet, ArcFace, Facenet512, ...), "
        "or random:<model> for random weights of a PyTorch one.",
    )
    detector: str = Field(
        default="opencv", description="A DeepFace detector: opencv, yunet, retinaface, ..."
    )
    profile_faces: bool = Field(
        default=True,
        description="opencv only: also run OpenCV's profile-face cascade (both directions) "
        "for turned heads the frontal cascade misses.",
    )
    deepface_home: Path | None = Field(
        default=None,
        description="Folder holding .deepface/weights; unset = $DEEPFACE_HOME, else ~.",
    )
    min_confidence: float = Field(default=0.0, ge=0, description="Drop faces detected below it.")
    max_faces: int = Field(default=32, ge=1, description="Per image; the largest faces are kept.")
    align: bool = Field(default=True, description="Rotate each face upright by its eyes.")
    normalization: str = Field(
        default="base", description="DeepFace input normalization (base, ArcFace, Facenet, ...)."
    )
    collection: str = "faces"
    people: PeopleSettings = Field(default_factory=PeopleSettings)


class Dinov2Settings(EngineSettings, TaskSettings):
    """DINOv2 image features in their own collection, keyed by the same image id as CLIP."""

    enabled: bool = Field(default=False, description="Off unless enabled (`make run` enables it).")
    model: str = "facebook/dinov2-small"
    collection: str = "dinov2_images"


class CaptionSettings(TaskSettings):
    """Captions (seeds 002 and 003), stored with the image id in their own collection."""

    enabled: bool = Field(default=False, description="Off by default: generation is slow on a CPU.")
    model: str = Field(
        default="Salesforce/blip-image-captioning-base",
        description="An image-to-text checkpoint with fixed-size pixel inputs (BLIP, GIT), or "
        "a chat vision-language model with a chat template (SmolVLM/Idefics3, LLaVA-NeXT).",
    )
    collection: str = Field(
        default="captions",
        description="Caption in metadata.caption; vector = the captioner's pooled image feature.",
    )
    max_records: int = Field(default=8, ge=1, description="Largest micro-batch.")
    prompt: str = Field(
        default="",
        description="Text the caption continues (BLIP: e.g. 'a picture of'); chat models: "
        "the user's request beside the image (empty = 'Describe this image in one sentence.').",
    )
    max_new_tokens: int = Field(default=30, ge=1, le=512)
    text_collection: str = Field(
        default="caption_texts", description="The caption + BM25 sparse vector (text search)."
    )
    halve_rate: float = Field(
        default=0.5, gt=0, le=1, description="Seed 002: scale every side by this first..."
    )
    min_size: int = Field(
        default=384, ge=1, description="...but never the shorter side below this (pixels)."
    )


class OcrSettings(TaskSettings):
    """Text in images (Tesseract through pytesseract), stored by image id for text search."""

    enabled: bool = Field(
        default=False, description="Off unless enabled (`imagestream up` and `make run` do)."
    )
    model: str = Field(default="tesseract", description="The engine: Debian's tesseract binary.")
    language: str = Field(
        default="eng", description="Tesseract languages, e.g. eng or eng+deu (installed packs)."
    )
    workers: int = Field(
        default=0, ge=0, description="Pages read at once, one tesseract process each (0 = cores)."
    )
    page_segmentation: int = Field(
        default=3, ge=0, le=13, description="Tesseract --psm (3 = automatic page layout)."
    )
    min_confidence: float = Field(
        default=0.0, ge=0, le=1, description="Drop words Tesseract is less sure of."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per page; then the batch fails.")
    max_records: int = Field(default=8, ge=1, description="Largest micro-batch.")
    collection: str = Field(
        default="ocr_texts", description="Text + BM25 sparse vector per image (text search)."
    )


class ClipHeadSettings(EngineSettings, TaskSettings):
    """A task that scores CLIP image vectors (labels, classify) and stores nothing.

    Its model follows the clip section's (model, fallback, device, engine, precision)
    unless set, so one loaded CLIP serves clip, labels, classify and search in one process.
    """

    model: str = Field(default="", description="Empty = the clip section's model.")
    collection: str = Field(default="", description="Unused: this task stores nothing.")


class LabelsSettings(ClipHeadSettings):
    """Zero-shot labels in the stream (seed 001), over a set from ``zero_shot``."""

    enabled: bool = Field(default=False, description="Off unless enabled (`imagestream up` does).")
    label_set: str | None = Field(default=None, description="Default: zero_shot.default_set.")
    top_k: int | None = Field(default=None, ge=1, description="Default: zero_shot.top_k.")


class ClassifySettings(ClipHeadSettings):
    """Trained classifier heads (seed 004) applied to every image's CLIP vector."""

    enabled: bool = Field(default=False, description="Off unless enabled.")
    heads_dir: Path = Field(
        default=RUNTIME_DIR / "heads",
        description="Where `imagestream classifier train` saves heads; reloaded on change.",
    )


class SearchSettings(BaseModel):
    """Text-to-image search: ``TextQuery`` on queries.v1, answered from the CLIP collection.

    It runs wherever the clip task runs, with the clip task's model and collection (the
    text must be embedded by the model that embedded the images).
    """

    enabled: bool = Field(default=True, description="Serve queries beside the clip task.")
    group_id: str | None = Field(
        default=None, description="Default: imagestream-search, after KAFKA__TOPIC_PREFIX."
    )
    max_records: int = Field(default=32, ge=1, description="Largest micro-batch of queries.")
    batch_timeout_ms: int = Field(default=50, ge=1)
    fusion_depth: int = Field(
        default=50, ge=1, description="Text and hybrid modes: how deep each ranked list is read."
    )
    rrf_k: int = Field(default=60, ge=1, description="Hybrid mode: reciprocal rank fusion's k.")


WEARABLE = (
    "hat", "cap", "sunglasses", "glasses", "scarf", "necklace", "earrings", "watch",
    "bracelet", "ring", "t-shirt", "shirt", "jacket", "coat", "dress", "skirt", "jeans",
    "shorts", "sneakers", "boots",
)  # fmt: skip


class ZeroShotSettings(BaseModel):
    """Zero-shot labels: CLIP text embeddings of each label, computed once per process."""

    label_sets: dict[str, list[str]] = Field(
        default_factory=lambda: {"wearable": list(WEARABLE)},
        description="Named label sets (JSON). The default is seed 001's 20 wearable categories.",
    )
    default_set: str = Field(default="wearable", description="Used when a request names none.")
    top_k: int = Field(default=3, ge=1, description="Labels returned per image.")
    prompt: str = Field(
        default="a photo of a {}", description="Template each label is embedded through."
    )
