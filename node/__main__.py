"""`python -m node --id N ...`: what the supervisor spawns (same as `lfctl node`)."""

import sys

from node.server import main

sys.exit(main())
