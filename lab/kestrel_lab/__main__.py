"""``python -m kestrel_lab``: the same as ``kestrel-lab``."""

import sys

from kestrel_lab.cli import main

sys.exit(main())
