"""``python -m benchmarks.politeness``: see ``benchmarks/politeness/run.py``."""

import sys

from benchmarks.politeness.run import main

sys.exit(main())
