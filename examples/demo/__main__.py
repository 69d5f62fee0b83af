"""``python -m examples.demo`` (from the project's root): see ``examples.demo.cli``."""

import sys

from examples.demo.cli import main

sys.exit(main())
