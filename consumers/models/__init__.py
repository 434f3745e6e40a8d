"""Encoders, one module each; importing this package registers them all explicitly."""

from consumers.models import captioner, clip, dinov2, sim, tesseract
from consumers.models.encoder import Encoder, encoder_class, make_encoder, registered
from consumers.models.face import recognition

__all__ = [
    "Encoder",
    "captioner",
    "clip",
    "dinov2",
    "encoder_class",
    "make_encoder",
    "recognition",
    "registered",
    "sim",
    "tesseract",
]
