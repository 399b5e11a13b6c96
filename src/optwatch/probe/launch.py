"""Entry point of the instrumented training process: start the probe, then run the user's script as __main__."""

from __future__ import annotations

import os
import runpy
import sys


def run_script(script: str, args: list[str]) -> int:
    from optwatch.probe.probe import start_probe

    sys.argv = [script, *args]
    probe = start_probe()
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    exit_code: int = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except BaseException:
        exit_code = 1
        raise
    finally:
        probe.close(exit_code)
    return exit_code


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m optwatch.probe.launch SCRIPT [ARGS...]")
    sys.exit(run_script(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
