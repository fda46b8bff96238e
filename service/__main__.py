"""`python -m service serve ...`, the same as the `registry-gateway` console script."""

import sys

from service.app.cli import main

sys.exit(main())
