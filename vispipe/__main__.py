"""`python -m vispipe` is the `vispipe` command."""

import sys

from vispipe.cli import main

sys.exit(main())
