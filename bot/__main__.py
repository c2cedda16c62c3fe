"""``python -m bot``: the same as the ``desmigratif`` command."""

import sys

from bot.cli import main

sys.exit(main())
