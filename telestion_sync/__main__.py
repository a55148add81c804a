"""``python -m telestion_sync``: the ``telestion-sync`` command."""

import sys

from .cli import main

sys.exit(main())
