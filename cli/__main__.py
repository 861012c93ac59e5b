"""``python -m cli``: the ``phasescreen`` command."""

import sys

from cli import main

sys.exit(main())
