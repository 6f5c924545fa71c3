"""Noticing that a client went away while its request is held (a long poll): under the
gevent worker a greenlet waits on the connection and sees it close, so the poll ends at
once and stops counting against the caps. (Under gthread nothing watches: a thread per
watch would cost what gevent saves; the poll then ends when its wait does.)"""

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import request


@contextmanager
def client_gone(on_gone: Callable[[], None]) -> Iterator[threading.Event]:
    """An event set, and on_gone called, if the client closes its connection meanwhile."""
    gone = threading.Event()
    sock = request.environ.get("gunicorn.socket")
    if sock is None or not _gevent_active():
        yield gone
        return
    import gevent

    watcher = gevent.spawn(_watch, sock, gone, on_gone)
    try:
        yield gone
    finally:
        watcher.kill(block=True)  # off the socket before the server reads its next request there


def _watch(sock: socket.socket, gone: threading.Event, on_gone: Callable[[], None]) -> None:
    while True:
        try:
            closed = sock.recv(1, socket.MSG_PEEK) == b""  # data instead: a next request, pipelined
        except TimeoutError:  # the connection's read timeout (api_read_timeout_s): the client is still there
            continue
        except OSError:
            closed = True
        break
    if closed:
        gone.set()
        on_gone()


def _gevent_active() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")
