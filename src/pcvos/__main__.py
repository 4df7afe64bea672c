"""``python -m pcvos`` runs the command line."""

import sys

from pcvos.cli import main

sys.exit(main())
