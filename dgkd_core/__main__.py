import sys

from dgkd_core.cli import main

sys.exit(main())
