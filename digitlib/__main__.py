import sys

from digitlib.cli import main

sys.exit(main())
