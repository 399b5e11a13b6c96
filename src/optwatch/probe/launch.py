"""Entry point of the instrumented training process: start the probe, then run the user's script as __main__.

The script sees what ``python script.py`` gives it: ``sys.argv``, an absolute ``__file__``, its own directory
(symbolic links resolved) as ``sys.path[0]``, and a traceback that starts at its own code.
"""

from __future__ import annotations

import io
import os
import sys
import types


def _script_frames(traceback, path: str):
    """The traceback from the script's first frame on (the launcher's and runpy's frames left out)."""
    start = traceback
    while start is not None and start.tb_frame.f_code.co_filename != path:
        start = start.tb_next
    return start or traceback


def _run_as_main(path: str) -> None:
    """Run the file at ``path`` as the interpreter runs a script: a fresh ``__main__`` module, its code
    compiled under its absolute path (``runpy.run_path`` would also set ``sys.argv[0]`` to that path)."""
    from importlib.machinery import SourceFileLoader

    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path, __cached__=None, __loader__=SourceFileLoader("__main__", path), __package__=None, __spec__=None
    )
    sys.modules["__main__"] = main
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def run_script(script: str, args: list[str]) -> int:
    from optwatch.probe.start import start_probe

    path = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    probe = start_probe()
    exit_code: int = 0
    try:
        _run_as_main(path)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except Exception as exc:
        exit_code = 1
        probe.close(exit_code)
        # As the interpreter would report it, through the script's own excepthook if it set one.
        trimmed = _script_frames(exc.__traceback__, path)
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        sys.exit(1)
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
