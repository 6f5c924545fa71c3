"""gunicorn settings file (`gunicorn -c python:api.gunicorn_conf`): when a worker is told
to stop (SIGTERM), its long polls end at once with the job as it stands, so clients poll
again, against the restarted API, instead of holding the restart up."""

import signal
import threading

stopping = threading.Event()


def post_worker_init(worker) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        stopping.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
