"""`python -m deploy ...` from the repo root: the launcher's command line (deploy/cli.py)."""

import sys

from deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
