"""uvicorn's own command line, with `--fd` fixed for an inherited TCP socket.

`uvicorn --fd N` wraps the descriptor as `socket.fromfd(N, AF_UNIX, SOCK_STREAM)` whatever it really is, so
uvloop serves a TCP listener as a Unix-socket server: accepted connections get no TCP_NODELAY, and small
responses written in two parts wait for the client's delayed ACK (about 40 ms each). Here `fromfd` asks the
descriptor for its real family, and everything else is plain uvicorn:

    python -m loadtest.bench.uvicorn_fd services.flashsale.main:app --fd 5 --loop uvloop --http httptools ...

loadtest/bench/servers.py uses it to run two replicas on one port, each with its own SO_REUSEPORT socket.
"""

from __future__ import annotations

import os
import socket
import sys

import uvicorn.main


def _fromfd(fd: int, family: int, type: int, proto: int = 0) -> socket.socket:
    # socket.socket(fileno=...) detects family, type and protocol from the descriptor itself.
    return socket.socket(fileno=os.dup(fd))


if __name__ == "__main__":
    socket.fromfd = _fromfd  # type: ignore[assignment]
    sys.exit(uvicorn.main.main())
