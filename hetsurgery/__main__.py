"""``python -m hetsurgery`` is the command line."""

import sys

from hetsurgery.cli import main

sys.exit(main())
