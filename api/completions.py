"""POST /v1/chat/completions: OpenAI-compatible. Waits for the reply up to chat_wait_s,
then answers 202 with the job id to poll. The session travels as `session_id` in the
body (the OpenAI client's extra_body) or the X-Greenroom-Session header."""

import re

from flask import Blueprint, request, url_for

from pool_manager.schemas import ID_PATTERN, ChatJob, JobView

from .body import json_object
from .auth import tenant
from .errors import ApiError
from .streams import counted, openai_chunks, sse_response
from .gunicorn_conf import stopping
from .services import services
from .submit import submit

bp = Blueprint("completions", __name__, url_prefix="/v1/chat")
SESSION_HEADER = "X-Greenroom-Session"

# A failed job's code -> the status a chat client gets.
FAILURE_STATUS = {"no_container_available": 503, "container_lost": 502, "container_timeout": 504,
                  "model_error": 502, "session_closed": 409, "session_model_mismatch": 409,
                  "invalid_request": 422, "unknown_model": 404, "limit_exceeded": 429}


@bp.post("/completions")
def completions():
    body = json_object()
    stream = body.pop("stream", None)
    stream = False if stream is None else stream  # null is false, as OpenAI takes it; 0, "" or {} are not
    if not isinstance(stream, bool):
        raise ApiError(422, "invalid_request", "stream: must be true or false", field="stream")
    stream_options = body.pop("stream_options", None)
    stream_options = {} if stream_options is None else stream_options
    if not isinstance(stream_options, dict):
        raise ApiError(422, "invalid_request", "stream_options: must be an object", field="stream_options")
    session_id = body.pop("session_id", None)  # an empty one is invalid, not absent
    header = request.headers.get(SESSION_HEADER)
    if header is not None and not re.fullmatch(ID_PATTERN, header):  # checked even when the body wins
        raise ApiError(422, "invalid_request", f"{SESSION_HEADER}: must match {ID_PATTERN}", field=SESSION_HEADER)
    if session_id is None:
        session_id = header
    required = {name: body.pop(name) for name in ("model", "messages") if name in body}  # absent: "missing"
    fields = required | {"session_id": session_id, "options": body, "stream": stream}
    chat_job = ChatJob.model_validate(fields)
    if stream:
        return streamed(chat_job, include_usage=bool(stream_options.get("include_usage")))
    job = submit(chat_job)
    with services().waits.hold(tenant()) as admitted:  # past the caps: a 202 at once, to poll
        job = services().jobs.wait(job["id"], services().settings.chat_wait_s if admitted else 0, stopping)
    headers = {SESSION_HEADER: job["session_id"]}
    if job["status"] == "succeeded":
        return job["result"], 200, headers
    if job["status"] == "failed":
        error = job["error"]
        raise ApiError(FAILURE_STATUS.get(error["code"], 500), error["code"], error["message"], job_id=job["id"])
    headers["Location"] = url_for("jobs.read", job_id=job["id"])
    return JobView.of(job).public(), 202, headers


def streamed(job: ChatJob, include_usage: bool):
    """The reply as OpenAI streams it (streams.openai_chunks), from the moment it is queued."""
    if not services().waits.enter(tenant()):
        raise ApiError(429, "too_many_waits", "too many streams are open; try again in a second",
                       headers={"Retry-After": "1"})
    try:
        record = submit(job)
    except Exception:
        services().waits.leave(tenant())
        raise
    response = sse_response(counted(tenant(), openai_chunks(record["id"], include_usage)))
    response.headers[SESSION_HEADER] = record["session_id"]
    return response
