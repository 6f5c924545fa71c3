"""GET /: where things are, for whoever opens the API's address (public)."""

from flask import Blueprint, request

bp = Blueprint("index", __name__)


@bp.get("/")
def index():
    root = request.url_root.rstrip("/")
    return {
        "name": "greenroom",
        "about": "chat jobs served by AI model servers booted before the job arrived",
        "docs": "README.md (how to use it) and DESIGN.md (the contract) in the greenroom source",
        "openapi": f"{root}/openapi.json",
        "pool_page": f"{root}/ui",
        "chat": f"{root}/v1/chat/completions",
        "jobs": f"{root}/v1/jobs",
        "health": f"{root}/healthz",
        "metrics": f"{root}/metrics",
    }
