"""PID 1 of the MLflow runtime image: runs `python3.11 -m mlflow <args>` and stops it cleanly.

MLflow's CLI is a Python process that starts the scoring server (uvicorn) as its child. As PID 1
it would ignore SIGTERM (the kernel drops signals PID 1 has no handler for), so a pod would
stop only when the kubelet kills it at the end of its grace period. Here SIGTERM and SIGINT go
to the CLI's whole process group (the CLI and uvicorn with its workers); uvicorn stops taking
connections and finishes the requests it holds. This process reaps every child, orphans
included, and exits with the CLI's status once none is left.
"""

import os
import signal
import sys


def main() -> int:
    argv = [sys.executable, "-m", "mlflow", *sys.argv[1:]]
    child = os.fork()
    if child == 0:
        os.setsid()
        os.execv(sys.executable, argv)

    def forward(signum, _frame):
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    status = 0
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(raw)
            status = 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
