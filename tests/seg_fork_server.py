"""A fork server for tests that run pdcr-seg's command line many times (tests/test_seg_errors.py).

Started as a fresh interpreter, it imports torch, MONAI and pdcr_seg once and never runs a torch op;
then, for each request line on stdin (JSON: argv, cwd, stdout path, stderr path), it forks a child
that does what `python -m pdcr_seg` does and answers with the child's exit status on stdout.

Why not fork pytest's own process: by the time this test runs, earlier tests have started torch's
intra-op thread pools there, and forking a process whose pools have run is a race; in one CI run
the child died in torch's pool set-up ("pool INTERNAL ASSERT FAILED ... Invalid thread pool!"). A
process that has only imported torch has no pool to inherit. OMP_NUM_THREADS=1 comes from the
environment the test gives this server, read by each child when its pool is first made.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import monai  # noqa: F401  (imported once here, not once per child)
import torch  # noqa: F401

from pdcr_seg.cli import main


def _child(request: dict) -> None:
    """Runs main(argv) with stdout/stderr sent to files; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        code = main(request["argv"])
    except SystemExit as exit:  # argparse's errors
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:  # what the interpreter would print for an uncaught exception, status 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    os.environ.pop("PDCR_SEG_TRACEBACK", None)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    serve()
