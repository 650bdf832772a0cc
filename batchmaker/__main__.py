"""``python -m batchmaker ...`` is the ``batchmaker`` command."""

import sys

from batchmaker.cli import main

raise SystemExit(main(sys.argv[1:]))
