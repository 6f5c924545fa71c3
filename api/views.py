"""How records look to clients."""

JOB_FIELDS = ("id", "status", "model", "session_id", "created_at", "finished_at", "position", "result", "error")


def job_view(job: dict) -> dict:
    view = {name: job[name] for name in JOB_FIELDS if name in job}
    for stamp in ("created_at", "finished_at"):
        if stamp in view:
            view[stamp] = float(view[stamp])
    if "position" in view:
        view["position"] = int(view["position"])
    return view
