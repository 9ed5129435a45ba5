"""``python -m zs_cli``: the ``zs`` command."""

import sys

from .main import main

sys.exit(main())
