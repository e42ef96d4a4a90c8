"""`python -m inweights ...` (and `accelerate launch -m inweights learn ...`): the same as the `inweights` command."""

import sys

from inweights.cli import main

sys.exit(main())
