import os
import sys

# `python -m optwatch` puts the directory it is started in first on sys.path, where the `optwatch` command puts
# none: a user's `hmac.py` or `queue.py` there must not stand in for the standard library's.
try:
    _started_in = os.getcwd()
except OSError:  # (a directory since removed)
    _started_in = None
if sys.path and sys.path[0] in ("", _started_in):
    del sys.path[0]

from optwatch.cli import main  # noqa: E402 (after the path is set)

sys.exit(main())
