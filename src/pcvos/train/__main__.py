"""``python -m pcvos.train --config ...`` (also under ``torchrun -m pcvos.train``)."""

import sys

from pcvos.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
