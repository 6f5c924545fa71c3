"""A job's log: every state it went through and every chunk of a streamed reply, in order,
in a Redis Stream (`job-log:<id>`, keys.py) that expires with the job. Its entry ids are
the SSE event ids of GET /v1/jobs/<id>/events, so a client that lost its connection
resumes where it left off (Last-Event-ID).

States are logged by the job store's transition script (jobs.py), chunks here; both
publish on the job's channel, which wakes its readers (job_events.py): a reader never
blocks a Redis connection waiting.
"""

import json
from dataclasses import dataclass

from redis import Redis

from .keys import Keys

MAX_ENTRIES = 20_000  # a reply streamed in more chunks keeps only the latest (approximately)

# Append a chunk and wake the job's readers.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return id
"""


@dataclass(frozen=True)
class Entry:
    id: str  # the stream entry id: "<ms>-<seq>"
    event: str  # a job state, "chunk", or "restart" (a new delivery streams the reply again)
    data: dict


class JobLog:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: int):
        self.redis, self.keys, self.ttl_s = redis, keys, ttl_s
        self._append = redis.register_script(_APPEND)

    def append(self, job_id: str, event: str, data: dict) -> str:
        return self._append(keys=[self.keys.job_log(job_id), self.keys.job_events(job_id)],
                            args=[MAX_ENTRIES, event, json.dumps(data), self.ttl_s])

    def read(self, job_id: str, after: str = "0-0", count: int = 500) -> list[Entry]:
        """Entries after the id `after` (exclusive), oldest first."""
        rows = self.redis.xrange(self.keys.job_log(job_id), min=f"({after}", count=count)
        return [Entry(entry_id, fields["event"], json.loads(fields.get("data") or "{}")) for entry_id, fields in rows]
