"""``python -m quota_authority.cli``: the ``quota-authority`` command."""

import sys

from . import main

sys.exit(main())
