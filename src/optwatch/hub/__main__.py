import sys

from optwatch.hub.server import main

sys.exit(main())
