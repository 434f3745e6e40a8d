"""Encoders, one module each; importing this package registers them all explicitly."""

from consumers.encoders import clip
from consumers.encoders.base import Encoder, encoder_class, registered

__all__ = ["Encoder", "clip", "encoder_class", "registered"]
