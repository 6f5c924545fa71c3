"""Loopback ports for host-networked servers, handed out without collisions.

A port is reserved in Redis (shared by every greenroom process on the host) before the
server binds it, so two concurrent creates never pick the same one; a bind test skips
ports that something else on the host already uses.
"""

import random
import socket

from redis import Redis

from .errors import RuntimeFailure
from .keys import PORTS


def _free_on_host(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, redis: Redis, port_range: tuple[int, int], engine_ranges: dict[str, tuple[int, int]] = {}):
        self.redis = redis
        self.low, self.high = port_range
        self.engine_ranges = engine_ranges  # an engine's own range, else port_range

    def allocate(self, holder: str, attempts: int = 64, engine: str = "") -> int:
        """A port of the engine's range (the engine's worker runs on its host: the bind test holds)."""
        low, high = self.engine_ranges.get(engine, (self.low, self.high))
        for _ in range(attempts):
            port = random.randint(low, high)
            if not self.redis.hsetnx(PORTS, port, holder):
                continue
            if _free_on_host(port):
                return port
            self.redis.hdel(PORTS, port)
        raise RuntimeFailure(f"no free port in {low}-{high} after {attempts} attempts")

    def reserve(self, port: int, holder: str) -> None:
        """Record a port that an adopted server already holds."""
        self.redis.hset(PORTS, port, holder)

    def release(self, port: int | None) -> None:
        if port:
            self.redis.hdel(PORTS, port)
