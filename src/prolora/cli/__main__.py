"""``python -m prolora.cli``: the same as the ``prolora`` command (used under ``torchrun``)."""

import sys

from prolora.cli import main

sys.exit(main())
