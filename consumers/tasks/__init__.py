"""Image tasks, one module each; ``registry.py`` names them."""
