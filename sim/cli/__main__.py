"""``python -m sim.cli``: the ``infer-os`` command."""

import sys

from sim.cli.app import main

sys.exit(main())
