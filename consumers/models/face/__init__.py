"""Faces: detection, alignment and recognition with DeepFace."""
