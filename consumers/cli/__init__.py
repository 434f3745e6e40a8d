"""The ``imagestream`` command and its subcommands."""

# Installs made before the regroup run this package's ``main`` (the old cli module's).
from consumers.cli.main import main

__all__ = ["main"]
