"""One exit-status convention for every ``cem-*`` command, kept in one place.

* 0: done.
* 2: the invocation is wrong and will fail the same way until it is changed: a usage
  error (argparse exits 2 by itself), a ``ConfigError``, a missing or corrupt bundle
  (``BundleError``), a data set that cannot be loaded as asked (``DatasetError``) or
  an unknown registry name (``UnknownNameError``).
* 1: the invocation was fine but running it failed, and may pass on a retry: an
  ``OSError`` (a port already bound, a disk that cannot be written) or any other
  ``CEMError`` (a remote error, an unusable capture store).
* 130: interrupted by Ctrl-C (128 + SIGINT, as shells report it).

Errors are reported as one line, ``<prog>: error: <message>`` on stderr, the shape
argparse uses, and never as a traceback; an exception outside this tree is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cem.errors import BundleError, CEMError, ConfigError, DatasetError, UnknownNameError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Checked first: BundleNotFoundError and DatasetNotFoundError are also OSErrors.
USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, BundleError, DatasetError, UnknownNameError)
RUNTIME_ERRORS: tuple[type[Exception], ...] = (CEMError, OSError)


def exit_code_for(exc: BaseException) -> int | None:
    """The exit status for ``exc``, or None for an exception the convention does not cover (a bug)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, RUNTIME_ERRORS):
        return EXIT_FAILURE
    return None


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` (arguments already parsed) and turn its errors into exit statuses.

    ``main`` functions end with ``return run_cli(parser.prog, lambda: run(args))``; the
    console script passes the result to ``sys.exit`` (``cem.launch.exit_command`` for the data-parallel
    ``cem-train`` and ``cem-attack``, whose torchrun workers skip the interpreter's teardown).
    """
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
