"""gunicorn settings file (`gunicorn -c python:api.gunicorn_conf`): when a worker is told
to stop (SIGTERM), its long polls end at once with the job as it stands, so clients poll
again, against the restarted API, instead of holding the restart up. The errors gunicorn
answers itself, for requests it cannot parse (a request line or headers too large, a
malformed header), are JSON like every other error, not gunicorn's HTML page. And the
gevent worker class the API runs under (`--worker-class api.gunicorn_conf.GeventWorker`)
gives up on a client that takes too long to send its request."""

import json
import signal
import threading

from gunicorn import util
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker as GunicornGeventWorker

from pool_manager.settings import get_settings

stopping = threading.Event()


class GeventWorker(GunicornGeventWorker):
    """gunicorn's gevent worker: a greenlet per connection, so thousands of open long polls
    and streams cost memory, not threads. Each connection's socket gets a timeout, so a
    request body sent a byte a minute cannot hold its greenlet forever (gunicorn's own
    keep-alive timeout covers only the request line and headers)."""

    def handle(self, listener, client, addr):
        client.setblocking(1)
        client.settimeout(get_settings().api_read_timeout_s)
        AsyncWorker.handle(self, listener, client, addr)


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

    from pool_manager.job_events import wake_every_waiter  # here: the worker, after gevent's patching

    def on_term(signum, frame):
        stopping.set()
        if isinstance(worker, GunicornGeventWorker):
            import gevent  # out of the signal handler, as gunicorn's gevent worker does

            gevent.spawn(wake_every_waiter)
        else:
            wake_every_waiter()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
