"""Encoders, one module each; importing this package registers them all explicitly."""

from consumers.encoders import caption, clip, dinov2, face, ocr, sim
from consumers.encoders.base import Encoder, encoder_class, make_encoder, registered

__all__ = [
    "Encoder",
    "caption",
    "clip",
    "dinov2",
    "encoder_class",
    "face",
    "make_encoder",
    "ocr",
    "registered",
    "sim",
]
