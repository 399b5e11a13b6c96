import sys

import optwatch

optwatch._drop_start_directory()

from optwatch.cli import main  # noqa: E402 (after the path is set)

sys.exit(main())
