"""`python -m castrl ...`: the same entry as the `castrl` command."""

import sys

from castrl.cli import main

sys.exit(main())
