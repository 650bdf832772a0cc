"""Entry point: ``python server.py [flags]`` is ``batchmaker serve [flags]``."""

import sys

from batchmaker.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
