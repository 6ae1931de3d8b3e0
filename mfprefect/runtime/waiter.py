"""Waiting for the local runner's answer to a run: in the command, or as the command.

While the runner carries out a run, the command's own process (Metaflow, the flow, mfprefect:
about 50 MB) has nothing left to do but wait. A command line therefore replaces itself with this
file, run as `python -I -S waiter.py FD PREFIX TOUCH LOG`: Python without site-packages (about
10 MB) that waits on the runner's socket, passes Ctrl-C on as the command would, prints the
line(s) the command would print and exits with its code. Python callers of runner.run use
`reply` from here too. Only the standard library, on purpose: the file runs without mfprefect
importable.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

# After Ctrl-C, how long to wait for the run to stop its steps.
STOP_WAIT_SECONDS = 20.0


def _read_all(conn: socket.socket) -> bytes:
    answer = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return answer
        answer += data


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def reply(conn: socket.socket, log: str) -> dict[str, Any]:
    """The runner's answer: {"pathspec": ...} or {"error": {exit_code, message, hint}}.

    Ctrl-C tells the run to stop (the runner sees this end close for writing) and waits a
    little while it stops its steps; a runner that went away answers with an error too.
    """
    try:
        answer = _read_all(conn)
    except KeyboardInterrupt:
        _say("mfprefect: interrupted; stopping the run's steps ...")
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(STOP_WAIT_SECONDS)
            _read_all(conn)
        except OSError:
            pass
        return _failed("interrupted: the run's steps were stopped", "`resume` the run to finish it")
    if not answer.strip():
        hint = f"see {log}; `resume` the run to finish it"
        return _failed("the local runner stopped before the run finished", hint)
    found: dict[str, Any] = json.loads(answer.splitlines()[0])
    return found


def _failed(message: str, hint: str) -> dict[str, Any]:
    return {"error": {"exit_code": 3, "message": message, "hint": hint}}


def main(argv: list[str]) -> int:
    """As the command: report the run's end as its command line would, and exit with its code."""
    fd, prefix, touch, log = int(argv[0]), argv[1], argv[2], argv[3]
    answer = reply(socket.socket(fileno=fd), log)
    if touch:
        try:
            os.utime(touch, None)  # the local server's idle clock
        except OSError:
            pass
    error = answer.get("error")
    if error:
        _say(prefix + str(error.get("message")))
        if error.get("hint"):
            _say(str(error["hint"]))
        return int(error.get("exit_code", 3))
    _say(f"mfprefect: run {answer['pathspec']} completed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
