"""Encoders, one module each; ``registry.py`` names which serves each task."""
