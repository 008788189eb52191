"""`python -m orchestrator` is `lfctl` (handy where the console script is not installed)."""

import sys

from orchestrator.cli import main

sys.exit(main())
