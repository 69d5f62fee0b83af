"""``python -m bench`` (from the project's root): see ``bench.cli``."""

import sys

from bench.cli import main

sys.exit(main())
