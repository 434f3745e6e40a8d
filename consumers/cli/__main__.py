"""``python -m consumers.cli``: the ``imagestream`` command."""

import sys

from consumers.cli.main import main

sys.exit(main())
