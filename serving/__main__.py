"""`python -m vispipe.serving ...`: the same flags as `vispipe serve`."""

import sys

from vispipe.serving.cli import main

sys.exit(main())
