import sys

from optwatch.cli import main

sys.exit(main())
