"""Server-sent events: a job's life as it happens (GET /v1/jobs/<id>/events), and a chat
reply streamed as OpenAI streams it (POST /v1/chat/completions with "stream": true).

Both follow the job's log (pool_manager/joblog.py), woken by the job's events; neither
holds a thread or a Redis connection while it waits. A comment line goes out every
HEARTBEAT_S, so proxies keep the connection and a client that went away is noticed (the
write fails, the generator is closed). Each stream counts against the open-waits caps.
"""

import json
import time
from collections.abc import Iterator

from flask import Response, stream_with_context

from pool_manager.joblog import Entry
from pool_manager.schemas import FINAL, JobView

from .gunicorn_conf import stopping
from .services import services

HEARTBEAT_S = 5.0


def sse_response(events: Iterator[str]) -> Response:
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event(data, name: str | None = None, event_id: str | None = None) -> str:
    lines = ([f"id: {event_id}"] if event_id else []) + ([f"event: {name}"] if name else [])
    return "\n".join([*lines, f"data: {data if isinstance(data, str) else json.dumps(data)}"]) + "\n\n"


def comment(text: str) -> str:
    return f": {text}\n\n"


def counted(tenant: str, events: Iterator[str]) -> Iterator[str]:
    """events, counted as one open wait of the tenant until they end (the caller entered it)."""
    try:
        yield from events
    finally:
        services().waits.leave(tenant)


def _entries(job_id: str, after: str) -> Iterator[Entry | None]:
    settings = services().settings
    lifetime = min(settings.max_stream_s, settings.chat_time_limit_s + 3 * settings.job_lease_s)  # a requeue too
    return services().jobs.follow(job_id, after, time.monotonic() + lifetime, HEARTBEAT_S, stopping)


def job_events(job_id: str, after: str) -> Iterator[str]:
    """Every entry of the job's log after `after`, named by its event, with its id (a client
    that lost the connection sends it back as Last-Event-ID); a final state carries the job."""
    yield "retry: 1000\n\n"
    for entry in _entries(job_id, after):
        if entry is None:
            yield comment("keep-alive")
        elif entry.event in FINAL:
            yield event(JobView.of(services().jobs.get(job_id)).public(), entry.event, entry.id)
        elif entry.event in ("chunk", "restart"):
            yield event(entry.data, entry.event, entry.id)
        else:
            yield event({"status": entry.event, **entry.data}, entry.event, entry.id)


def openai_chunks(job_id: str, include_usage: bool) -> Iterator[str]:
    """The reply's chat.completion.chunk objects as the model sends them, then one more
    with no choices and the `greenroom` object (session, warm, timings), then [DONE]. A
    job that fails, or a reply that must start over, ends with an OpenAI error event.
    While the job waits for a container, comments say its place in line."""
    head, waiting = {}, None
    for entry in _entries(job_id, "0-0"):
        if entry is None:
            yield comment(waiting or "keep-alive")
        elif entry.event == "waiting_for_container":
            waiting = f"waiting_for_container position={entry.data.get('position', '?')}"
            yield comment(waiting)
        elif entry.event == "chunk":
            waiting, head = None, head or {k: entry.data[k] for k in ("id", "created", "model") if k in entry.data}
            if entry.data.get("choices") or include_usage:  # the usage chunk only if asked for
                yield event(entry.data)
        elif entry.event == "succeeded":
            record = services().jobs.get(job_id)
            yield event(head | {"object": "chat.completion.chunk", "choices": [],
                                "greenroom": record["result"].get("greenroom")})
            yield "data: [DONE]\n\n"
            return
        elif entry.event in ("failed", "cancelled", "restart"):
            yield error(job_id, entry.event)
            return
    yield error(job_id, "stopping" if stopping.is_set() else "timeout")


def error(job_id: str, why: str) -> str:
    """An OpenAI-style error event for a stream that cannot go on."""
    record = services().jobs.get(job_id) or {}
    detail = record.get("error") or {}
    code = {"restart": "worker_lost", "timeout": "stream_timeout", "stopping": "server_stopping",
            "cancelled": "cancelled"}.get(why) or detail.get("code", "failed")
    message = detail.get("message") or {
        "restart": "the worker streaming this reply was lost; the job goes on",
        "timeout": "the reply did not come in time",
        "stopping": "this API server is stopping; the job goes on",
        "cancelled": "the job was cancelled"}.get(why, "the job failed")
    return event({"error": {"message": f"{message} (job {job_id}: GET /v1/jobs/{job_id})", "type": "greenroom_error",
                            "code": code}})
