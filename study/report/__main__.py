"""`python -m study.report`: see `study.report.command`."""

import sys

from study.report.command import main

sys.exit(main())
