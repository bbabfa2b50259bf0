"""`python3 -m localcluster ...` (see cli.py)."""

import sys

from localcluster.cli import main

sys.exit(main())
