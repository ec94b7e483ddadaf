"""``python -m sim.cli``: the ``infer-os`` command."""

import sys

from sim.cli.main import main

sys.exit(main())
