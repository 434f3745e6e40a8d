"""The settings tree, read from ``IMAGESTREAM_*`` variables and ``.env``."""
