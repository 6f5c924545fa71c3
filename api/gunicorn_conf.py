"""gunicorn settings file (`gunicorn -c python:api.gunicorn_conf`): when a worker is told
to stop (SIGTERM), its long polls end at once with the job as it stands, so clients poll
again, against the restarted API, instead of holding the restart up. And the errors
gunicorn answers itself, for requests it cannot parse (a request line or headers too
large, a malformed header), are JSON like every other error, not gunicorn's HTML page."""

import json
import signal
import threading

from gunicorn import util

stopping = threading.Event()


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for gunicorn.util.write_error (same signature), which writes HTML."""
    error = {"code": reason.lower().replace(" ", "_"), "message": mesg or reason}
    body = json.dumps({"error": error}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def post_worker_init(worker) -> None:
    util.write_error = write_json_error  # the worker calls it as util.write_error(...)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        stopping.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
