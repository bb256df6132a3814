"""``python -m sparknn``: the same as the ``sparknn`` command."""

import sys

from sparknn.cli import main

sys.exit(main())
