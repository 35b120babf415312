"""``python -m layergraft`` is the same as the ``layergraft`` command."""

import sys

from layergraft.cli import main

sys.exit(main())
