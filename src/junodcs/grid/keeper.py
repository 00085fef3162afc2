"""Run a command so that it dies with the grid even if it changes its user.

The kernel clears `PR_SET_PDEATHSIG` when a process changes its credentials, and Squid started as root
switches to the `proxy` user: it would outlive a supervisor killed with SIGKILL. The keeper stays as
the starting user with the death signal the supervisor gave it, and stops its child when it receives
SIGTERM or SIGINT. Usage: `python -m junodcs.grid.keeper COMMAND [ARGS...]`. Imports only the stdlib.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: python -m junodcs.grid.keeper COMMAND [ARGS...]\n")
        return 2
    child = subprocess.Popen(argv)

    def forward(_signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
