"""The pool page: GET /ui (the page, or its sign-in form), GET /ui/state (what it shows,
as JSON; the page polls it every second), POST /ui/login and /ui/logout. Admins only,
by bearer token or by the login form's session cookie (ui_sessions.py). The page is
plain HTML, CSS and JavaScript served from api/static/ui: no build step, no CDN."""

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, url_for

from pool_manager.board import PoolBoards

from .auth import digest
from .errors import ApiError
from .services import services
from .ui_sessions import COOKIE, SESSION_S, UiSessions, signed_in

bp = Blueprint("ui", __name__, url_prefix="/ui", static_folder="static/ui", static_url_path="/static",
               template_folder="templates")
MAX_TOKEN_CHARS = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def init_app(app: Flask) -> None:
    svc = app.extensions["greenroom"]
    app.extensions["greenroom_ui"] = (UiSessions(svc.redis, svc.settings.deployment),
                                      PoolBoards(svc.settings, svc.redis))
    app.register_blueprint(bp)


def sessions() -> UiSessions:
    return current_app.extensions["greenroom_ui"][0]


def boards() -> PoolBoards:
    return current_app.extensions["greenroom_ui"][1]


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(HEADERS)
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _admin() -> tuple[str | None, str, int]:
    """(tenant, "", 200) for an admin; else (None, why, 401 or 403)."""
    tenant, why = signed_in(request, sessions())
    if tenant is None:
        return None, why, 401
    if tenant not in services().settings.admin_tenants:
        return None, "The pool page needs an admin's token.", 403
    g.tenant = tenant
    return tenant, "", 200


def _login_form(message: str, status: int) -> tuple[str, int]:
    return render_template("ui/login.html", message=message), status


@bp.get("")
def page():
    tenant, why, status = _admin()
    if tenant is None:
        return _login_form(why, status)
    return render_template("ui/page.html", tenant=tenant)


@bp.get("/state")
def state():
    tenant, why, status = _admin()
    if tenant is None:
        raise ApiError(status, "unauthorized" if status == 401 else "forbidden",
                       "a valid admin token or pool page session is required")
    return boards().board(tenant).model_dump(mode="json", exclude_none=True)


@bp.post("/login")
def login():
    token = request.form.get("token", "")
    if not token or len(token) > MAX_TOKEN_CHARS:
        return _login_form("Give your admin token.", 422)
    token_digest = digest(token.strip())
    tenant = current_app.extensions["greenroom_tokens"].get(token_digest)
    if tenant is None or tenant not in services().settings.admin_tenants:
        # 200: the form again, saying why (a form's answer, as browsers expect it)
        return _login_form("That token is not valid." if tenant is None else "The pool page needs an admin's token.",
                           200)
    response = redirect(url_for("ui.page"), 303)
    response.set_cookie(COOKIE, sessions().open(tenant, token_digest), max_age=SESSION_S, path="/ui",
                        secure=True, httponly=True, samesite="Strict")
    return response


@bp.post("/logout")
def logout():
    if credential := request.cookies.get(COOKIE):
        sessions().close(credential)
    response = redirect(url_for("ui.page"), 303)
    response.delete_cookie(COOKIE, path="/ui", secure=True, httponly=True, samesite="Strict")
    return response
