"""`python -m bench ...`: the same as `payments bench ...`."""

import sys

from bench.cli import main

sys.exit(main())
