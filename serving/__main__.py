"""`python -m serving ...`: the same flags as `vispipe serve`."""

import sys

from serving.cli import main

sys.exit(main())
