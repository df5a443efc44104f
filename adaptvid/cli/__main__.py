"""``python -m adaptvid.cli`` (the form older commands used): the same as ``python -m adaptvid``."""
import sys

from . import main

sys.exit(main())
