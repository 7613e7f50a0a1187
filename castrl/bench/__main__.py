"""`python -m castrl.bench <suite> [flags]`."""

import sys

from castrl.bench import main

sys.exit(main(sys.argv[1:]))
