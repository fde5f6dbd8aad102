"""The support and operations console at /console: server-rendered pages, no JavaScript.

Routes (a contract):
  GET  /console                                   the recovery view (POST /console/recovery to recompute)
  GET  /console/cases?q=&state=&within=&unreachable=&sort=&after=   search and list (keyset pages)
  GET  /console/cases/{invoice}                   one case: its whole story in time order
  POST /console/cases/{invoice}/payment-link      reason + csrf: email the owner a payment link
  POST /console/cases/{invoice}/events/{event}/replay     reason + csrf: replay a failed event
  POST /console/cases/{invoice}/outbox/{row}/retry        reason + csrf: retry an email or notice
  POST /console/cases/{invoice}/release                    reason + csrf: release a held (owner unreachable) case
  GET|POST /console/login, POST /console/logout, GET /console/static/console.css

ConsoleGuard (a Falcon middleware, /console paths only) answers 401 with the login page to a
request without credentials, 403 to a POST without a valid CSRF token, and puts
X-Frame-Options: DENY and a CSP with no script at all on every console response.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlencode

import falcon
import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from config.settings import PROJECT_ROOT
from worker.console import auth
from worker.console.actions import ActionRefused, release_hold, replay_event, retry_outbox, send_payment_link
from worker.console.cases import SORTS, STATES, CaseFilter, case_story, list_cases
from worker.console.recovery import WINDOWS, snapshot
from worker.web.http_util import read_body
from worker.pure.money import format_amount

PREFIX = "/console"
TEMPLATES = PROJECT_ROOT / "templates" / "console"
MAX_FORM_BYTES = 16 * 1024
CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PUBLIC = (PREFIX + "/login", PREFIX + "/static/console.css")
DONE = {"payment-link": "Payment link requested: the owner of record gets it by email.",
        "replay-event": "Event replayed: it is queued for processing again.",
        "retry-email": "Email retry queued.", "retry-notice": "Notice retry queued.",
        "release-hold": "Hold released: disruption may proceed on schedule.",
        "recovery": "Recovery view recomputed."}
log = structlog.get_logger("worker.console")


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = lambda amount, currency: format_amount(amount, currency) if currency else amount
    env.filters["dt"] = lambda v: v.strftime("%Y-%m-%d %H:%M") if hasattr(v, "strftime") else (v or "-")
    env.filters["pct"] = lambda v: "-" if v is None else f"{v * 100:.1f}%"
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


def _is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleGuard:
    """Auth, CSRF and security headers for every /console request (other paths pass untouched)."""

    def __init__(self, runtime, pages: "Pages"):
        self.settings = runtime.settings
        self.pages = pages

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not _is_console(req.path):
            return
        nonce = req.cookies.get(auth.CSRF_COOKIE)
        if not nonce or len(nonce) > 128:
            nonce = auth.new_csrf_nonce()
            resp.set_cookie(auth.CSRF_COOKIE, nonce, path=auth.COOKIE_PATH, secure=_secure(req),
                            http_only=True, same_site="Strict")
        req.context.csrf = auth.csrf_token(self.settings, nonce)
        req.context.form = {}
        if req.method == "POST":
            req.context.form = _read_form(req)
            if not auth.csrf_ok(self.settings, req.cookies.get(auth.CSRF_COOKIE), req.context.form.get("csrf")):
                log.info("console.csrf_refused", path=req.path)
                resp.status = falcon.HTTP_403
                resp.content_type = "text/plain; charset=utf-8"
                resp.text = "forbidden: the form's CSRF token is missing or wrong; reload the page and try again\n"
                resp.complete = True
                return
        actor = auth.header_actor(req.get_header("Authorization"), self.settings)
        if actor is None:
            actor = auth.session_user(self.settings, req.cookies.get(auth.SESSION_COOKIE))
            req.context.via_session = actor is not None
        req.context.actor = actor
        if actor is None and req.path not in PUBLIC:
            log.info("console.unauthorized", path=req.path)
            resp.status = falcon.HTTP_401
            resp.set_header("WWW-Authenticate", 'Bearer realm="dunning console"')
            self.pages.render(req, resp, "login.html", next=req.relative_uri, error=None)
            resp.complete = True

    def process_response(self, req, resp, _resource, _succeeded) -> None:
        if not _is_console(req.path):
            return
        resp.set_header("X-Frame-Options", "DENY")
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("Cache-Control", "no-store")


def _secure(req) -> bool:
    return req.scheme == "https" or (req.get_header("X-Forwarded-Proto") or "").lower() == "https"


def _read_form(req) -> dict[str, str]:
    if not (req.content_type or "").startswith("application/x-www-form-urlencoded"):
        return {}
    raw = read_body(req, MAX_FORM_BYTES).decode("utf-8", "replace")
    try:
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True, max_num_fields=20).items()}
    except ValueError:  # too many fields: no form of ours, so no CSRF token either (403)
        return {}


class Pages:
    """Renders a template with what every page needs (actor, CSRF token, navigation)."""

    def __init__(self):
        self.env = _environment()

    def render(self, req, resp, name: str, **context) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.text = self.env.get_template(name).render(
            actor=getattr(req.context, "actor", None), csrf=getattr(req.context, "csrf", ""),
            via_session=getattr(req.context, "via_session", False), prefix=PREFIX, **context)


class Login:
    def __init__(self, runtime, pages: Pages):
        self.settings, self.pages = runtime.settings, pages

    def on_get(self, req, resp):
        if req.context.actor:
            return _see_other(resp, _safe_next(req.get_param("next")))
        self.pages.render(req, resp, "login.html", next=req.get_param("next") or PREFIX, error=None)

    def on_post(self, req, resp):
        form = req.context.form
        user, password = form.get("user", "").strip()[:200], form.get("password", "")
        target = _safe_next(form.get("next"))
        if not auth.check_login(self.settings, user, password):
            log.info("console.login_refused")
            resp.status = falcon.HTTP_401
            resp.set_header("WWW-Authenticate", 'Bearer realm="dunning console"')
            return self.pages.render(req, resp, "login.html", next=target, error="Wrong user or password.")
        resp.set_cookie(auth.SESSION_COOKIE, auth.make_session(self.settings, user), path=auth.COOKIE_PATH,
                        secure=_secure(req), http_only=True, same_site="Strict", max_age=auth.SESSION_SECONDS)
        log.info("console.login", user=user)
        _see_other(resp, target)


class Logout:
    def on_post(self, req, resp):
        resp.unset_cookie(auth.SESSION_COOKIE, path=auth.COOKIE_PATH)
        _see_other(resp, PREFIX + "/login")


def _safe_next(target: str | None) -> str:
    """Only a console path: never another site (an open redirect) or a header injection."""
    if not target or not _is_console(target.split("?", 1)[0]) or any(c in target for c in "\r\n\\"):
        return PREFIX
    return target


class Stylesheet:
    def on_get(self, _req, resp):
        resp.content_type = "text/css; charset=utf-8"
        resp.set_header("Cache-Control", "max-age=300")
        resp.data = (TEMPLATES / "console.css").read_bytes()


class Recovery:
    """GET /console: the recovery view; POST /console/recovery recomputes it now."""

    def __init__(self, runtime, pages: Pages):
        self.runtime, self.pages = runtime, pages

    def on_get(self, req, resp):
        view = snapshot(self.runtime, background=True)
        window = req.get_param("window") or "30"
        if window not in view["windows"]:
            window = "30"
        self.pages.render(req, resp, "recovery.html", view=view, window=window, windows=WINDOWS,
                          data=view["windows"][window], chart=weekly_chart(view["weeks"]),
                          done=DONE.get(req.get_param("done") or ""))

    def on_post(self, req, resp):
        snapshot(self.runtime, refresh=True)
        _see_other(resp, PREFIX + "?done=recovery")


class Cases:
    """GET /console/cases: search and the filtered, sorted list, one keyset page at a time."""

    def __init__(self, runtime, pages: Pages):
        self.runtime, self.pages = runtime, pages

    def on_get(self, req, resp):
        within = req.get_param("within") or ""
        flt = CaseFilter(q=req.get_param("q") or "", state=req.get_param("state") or "",
                         within_days=int(within) if within.isdigit() and int(within) <= 3650 else None,
                         unreachable=req.get_param("unreachable") == "1", sort=req.get_param("sort") or "opened",
                         after=(req.get_param("after") or "")[:512])
        page = list_cases(self.runtime, flt)
        params = {k: v for k, v in (("q", flt.q), ("state", flt.state), ("within", within),
                                    ("unreachable", "1" if flt.unreachable else ""), ("sort", flt.sort)) if v}
        next_url = f"{PREFIX}/cases?{urlencode({**params, 'after': page['next']})}" if page["next"] else None
        self.pages.render(req, resp, "cases.html", page=page, flt=flt, within=within, states=STATES,
                          sorts=SORTS, next_url=next_url)


class Case:
    """GET /console/cases/{invoice}: the whole story; POST actions under it."""

    def __init__(self, runtime, pages: Pages):
        self.runtime, self.pages = runtime, pages

    def show(self, req, resp, invoice_id: str, *, error: str | None = None, status=falcon.HTTP_200):
        story = case_story(self.runtime, invoice_id)
        if story is None:
            resp.status = falcon.HTTP_404
            return self.pages.render(req, resp, "not_found.html", invoice_id=invoice_id)
        resp.status = status
        self.pages.render(req, resp, "case.html", s=story, error=error, done=DONE.get(req.get_param("done") or ""))

    def on_get(self, req, resp, invoice_id):
        self.show(req, resp, invoice_id)

    def act(self, req, resp, invoice_id: str, action: str, run) -> None:
        """Run an action with the form's reason; on success back to the case (303), else the case with why."""
        try:
            done = run(req.context.form.get("reason")) or action
        except ActionRefused as exc:
            log.info("console.action_refused", action=action, invoice_id=invoice_id, reason=exc.message)
            return self.show(req, resp, invoice_id, error=exc.message, status=falcon.code_to_http_status(exc.status))
        log.info("console.action", action=done, invoice_id=invoice_id, actor=req.context.actor)
        _see_other(resp, f"{PREFIX}/cases/{quote(invoice_id, safe='')}?done={done}")

    def on_post_payment_link(self, req, resp, invoice_id):
        self.act(req, resp, invoice_id, "payment-link", lambda reason: send_payment_link(
            self.runtime, invoice_id, actor=req.context.actor, reason=reason) and None)

    def on_post_replay(self, req, resp, invoice_id, event_id):
        self.act(req, resp, invoice_id, "replay-event", lambda reason: replay_event(
            self.runtime, invoice_id, event_id, actor=req.context.actor, reason=reason))

    def on_post_release(self, req, resp, invoice_id):
        self.act(req, resp, invoice_id, "release-hold", lambda reason: release_hold(
            self.runtime, invoice_id, actor=req.context.actor, reason=reason))

    def on_post_retry(self, req, resp, invoice_id, row_id):
        self.act(req, resp, invoice_id, "retry", lambda reason: "retry-" + retry_outbox(
            self.runtime, invoice_id, row_id, actor=req.context.actor, reason=reason))


def _see_other(resp, location: str) -> None:
    resp.status = falcon.HTTP_303
    resp.location = location
    resp.content_type = "text/plain; charset=utf-8"
    resp.text = f"see {location}\n"


def weekly_chart(weeks: list[dict]) -> Markup:
    """Failed (opened) vs recovered cases per week as an SVG bar chart; numbers only, drawn here."""
    width, height, pad, label_h = 640, 200, 28, 18
    top = max([w["failed"] for w in weeks] + [1])
    slot = (width - pad) / max(len(weeks), 1)
    bar = max(2.0, slot / 2 - 2)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + label_h}" role="img" '
             f'aria-label="Failed and recovered cases per week" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="0" y="12" font-size="11" fill="#555">{top}</text>',
             f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>']
    for i, week in enumerate(weeks):
        x = pad + i * slot
        for j, (key, colour) in enumerate((("failed", "#d9534f"), ("recovered", "#2e8b57"))):
            h = (height - 20) * int(week[key]) / top
            parts.append(f'<rect x="{x + j * (bar + 1):.1f}" y="{height - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{key}: {int(week[key])}</title></rect>')
        parts.append(f'<text x="{x:.1f}" y="{height + 13}" font-size="10" fill="#555">'
                     f'{str(week["starts"])[5:10]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def add_routes(app: falcon.App, runtime) -> None:
    """Mount the console on the web process's Falcon app (called by worker.web.app.create_app)."""
    pages = Pages()
    app.add_middleware(ConsoleGuard(runtime, pages))
    app.add_route(PREFIX, Recovery(runtime, pages))
    app.add_route(PREFIX + "/recovery", Recovery(runtime, pages))
    app.add_route(PREFIX + "/login", Login(runtime, pages))
    app.add_route(PREFIX + "/logout", Logout())
    app.add_route(PREFIX + "/static/console.css", Stylesheet())
    app.add_route(PREFIX + "/cases", Cases(runtime, pages))
    case = Case(runtime, pages)
    app.add_route(PREFIX + "/cases/{invoice_id}", case)
    app.add_route(PREFIX + "/cases/{invoice_id}/payment-link", case, suffix="payment_link")
    app.add_route(PREFIX + "/cases/{invoice_id}/events/{event_id}/replay", case, suffix="replay")
    app.add_route(PREFIX + "/cases/{invoice_id}/outbox/{row_id}/retry", case, suffix="retry")
    app.add_route(PREFIX + "/cases/{invoice_id}/release", case, suffix="release")

