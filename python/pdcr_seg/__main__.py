"""python -m pdcr_seg ... (and torchrun -m pdcr_seg ...): the pdcr-seg command line."""

import sys

from .console import main

sys.exit(main())
