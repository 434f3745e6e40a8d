"""Encoders, one module each; ``registry.py`` names which serves each task."""

from consumers.models.encoder import Encoder
from consumers.models.registry import encoder_class, make_encoder, registered

__all__ = ["Encoder", "encoder_class", "make_encoder", "registered"]
