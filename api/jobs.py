"""/v1/jobs: submit, poll (with long polling), cancel."""

import re

from flask import Blueprint, request, url_for

from pool_manager.schemas import FINAL, ChatJob, JobView

from .auth import tenant, visible
from .body import json_object
from .errors import ApiError
from .gone import client_gone
from .streams import counted, job_events, sse_response
from .gunicorn_conf import stopping
from .services import services
from .submit import submit

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
def create():
    job = submit(ChatJob.model_validate(json_object()))
    location = url_for("jobs.read", job_id=job["id"])
    return JobView.of(job).public(), 202, {"Location": location}


@bp.get("/<job_id>")
def read(job_id: str):
    job = visible_job(job_id)
    wait = wait_seconds()
    if wait and job["status"] not in FINAL:
        jobs = services().jobs
        with services().waits.hold(tenant()) as admitted, client_gone(lambda: jobs.events.wake(job_id)) as gone:
            if not admitted:
                raise ApiError(429, "too_many_waits", "too many long polls are open; poll again in a second",
                               headers={"Retry-After": "1"})
            job = jobs.wait(job_id, wait, stopping, gone) or job
    if job["status"] == "waiting_for_container":  # its place now: the record has it as of when it parked
        job["position"] = services().pools.place(job["model"], job["tenant"], job_id) or job.get("position")
    return JobView.of(job).public()


@bp.delete("/<job_id>")
def cancel(job_id: str):
    job = visible_job(job_id)
    if not services().jobs.cancel(job_id):
        job = services().jobs.get(job_id) or job
        if job["status"] != "cancelled":
            raise ApiError(409, "not_cancellable", f"the job is {job['status']}; only queued or waiting jobs cancel")
    return JobView.of(services().jobs.get(job_id)).public()


@bp.get("/<job_id>/events")
def events(job_id: str):
    """The job's life as server-sent events; resumable with Last-Event-ID."""
    visible_job(job_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or "0-0"
    if not re.fullmatch(r"\d{1,20}-\d{1,20}", after):
        raise ApiError(422, "invalid_request", "Last-Event-ID: must be an event id of this stream, as "
                                               "<milliseconds>-<sequence>", field="Last-Event-ID")
    if not services().waits.enter(tenant()):
        raise ApiError(429, "too_many_waits", "too many streams are open; try again in a second",
                       headers={"Retry-After": "1"})
    return sse_response(counted(tenant(), job_events(job_id, after)))


def visible_job(job_id: str) -> dict:
    job = services().jobs.get(job_id) if len(job_id) <= 128 else None
    if job is None or not visible(job.get("tenant")):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return job


def wait_seconds() -> float:
    raw = request.args.get("wait", "0")
    limit = services().settings.max_wait_s
    try:
        wait = float(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", "wait: must be a number of seconds", field="wait") from None
    if not 0 <= wait <= limit:
        raise ApiError(422, "invalid_request", f"wait: must be between 0 and {limit:g}", field="wait")
    return wait
