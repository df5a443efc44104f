"""``python -m adaptvid ...`` (and ``accelerate launch -m adaptvid ...``): the same as the ``adaptvid`` command."""
import sys

from .cli import main

sys.exit(main())
