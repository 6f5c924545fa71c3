"""A fix for one teardown bug of kombu 5.7's Redis transport, as celery 5.7 drives it.

When a worker's broker connection drops while it holds unacknowledged messages (a chat
job in flight during a Redis restart), celery's consumer first collects the connection,
which detaches its transport (transport.client = None), then closes it again; that
second close returns the unacknowledged messages through the detached transport, kombu
raises AttributeError rather than a connection error, and the worker dies
("Unrecoverable error"). Raising the transport's own connection error there lets celery
go on reconnecting, as it does whenever Redis is down; the messages stay in Redis's
unacked set and come back after the visibility timeout, as a killed worker's do.
tests/test_faults_infra.py restarts Redis under jobs in flight to show it.
"""

from kombu.transport import redis as kombu_redis


def apply() -> None:
    original = kombu_redis.Channel._connparams
    if getattr(original, "greenroom_fix", False):
        return

    def _connparams(self, *args, **kwargs):
        if self.connection.client is None:  # detached: nothing to reach Redis through
            raise kombu_redis.get_redis_ConnectionError()("the broker connection is closed")
        return original(self, *args, **kwargs)

    _connparams.greenroom_fix = True
    kombu_redis.Channel._connparams = _connparams
