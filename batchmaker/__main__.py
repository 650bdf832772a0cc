"""``python -m batchmaker ...`` is the ``batchmaker`` command."""

import sys

from batchmaker.cli.main import main

raise SystemExit(main(sys.argv[1:]))
