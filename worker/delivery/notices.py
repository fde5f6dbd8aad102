"""Deliver platform notices, signed, once each, strictly in order per account.

A `platform_notices` row holds the exact JSON body, fixed when the notice was decided
(worker.delivery.outbox.add_notice); every try POSTs those same bytes to PLATFORM_WEBHOOK_URL, freshly
signed twice: the Standard Webhooks headers (`webhook-id` = the notice id, `webhook-timestamp`,
`webhook-signature: v1,<base64>`; worker.pure.standard_webhooks), which any platform verifies with a
maintained library, and `Dunning-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
(Stripe's scheme) for the receivers written before. With several PLATFORM_WEBHOOK_SECRETs each
header carries one signature per secret (rotation). The platform dedupes on the body's `id`.

Order: only the head of an account (its lowest `seq` still pending) is ever tried; delivery
stops at the first failure, so `service.restored` can never overtake the `service.disrupted`
it answers. Concurrency: the head is claimed with a guarded update (pending -> sending with a
lease; worker/delivery/leased_delivery.py, shared with emails), so two workers delivering one account
cannot both send it; a worker that dies leaves a lapsed lease, retried by the sweeper. A 2xx marks
the notice sent (never sent again); network errors and other statuses are retried with
exponential backoff for at least three days, then the notice is marked failed (kept, visible in
`dunning stats`) and the next one may proceed.

Without PLATFORM_WEBHOOK_URL each signed notice is written as `<id>.json` in NOTICE_OUTBOX_DIR.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import and_, func, select

from worker.pure import standard_webhooks
from worker.pure.clock import utcnow
from worker.pure.message_log import bind_ids_of
from worker.delivery.leased_delivery import Leased
from worker.intake.signatures import sign_all

log = structlog.get_logger("worker.delivery.notices")

SIGNATURE_HEADER = "Dunning-Signature"
LEASE = timedelta(minutes=2)            # one POST takes at most TIMEOUT seconds
ENQUEUE_LEASE = timedelta(seconds=60)  # a queued delivery message is not queued again before this
TIMEOUT = 10.0
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
RETRY_FOR = timedelta(days=3)           # keep trying at least this long...
MIN_ATTEMPTS = 20                       # ...and at least this many times before giving up
MAX_PER_RUN = 100
SWEEP_BATCH = 500
USER_AGENT = "dunning-worker/notices"
DELIVERY = Leased("platform_notices", "notice", lease=LEASE, enqueue_lease=ENQUEUE_LEASE, backoff_base=BACKOFF_BASE,
                  backoff_cap=BACKOFF_CAP, retry_for=RETRY_FOR, min_attempts=MIN_ATTEMPTS)


class DeliveryFailed(Exception):
    """Raised by a transport when the platform did not acknowledge a notice (retried later)."""


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... capped at 1 h, after the n-th failed attempt."""
    return DELIVERY.backoff(attempts)


# -- transports ---------------------------------------------------------------------------
def signed_headers(notice_id: str, body: str, secrets: tuple[str, ...] | list[str],
                   timestamp: int | None = None) -> dict[str, str]:
    """Both signature schemes for one try, on one timestamp (none without a secret)."""
    if not secrets:
        return {}
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {**standard_webhooks.headers(notice_id, body, secrets, timestamp),
            SIGNATURE_HEADER: sign_all(body, secrets, timestamp)}


def post_notice(url: str, notice_id: str, body: str, secrets: tuple[str, ...] | list[str],
                timeout: float = TIMEOUT) -> int:
    """POST the stored body with fresh signatures; return the 2xx status or raise DeliveryFailed.

    On the process's pooled keep-alive client (worker/infra/http_pool.py); a redirect is not followed
    (a POST would turn into a GET) and counts as a failure, as any other non-2xx answer.
    """
    from worker.infra import http_pool
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               **signed_headers(notice_id, body, secrets)}
    try:
        response = http_pool.post(url, body.encode("utf-8"), headers, timeout)
    except (*http_pool.NETWORK_ERRORS, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"{type(exc).__name__}: {reason}"[:300]) from exc
    status = response.status
    if not 200 <= status < 300:
        detail = response.body[:300].decode("utf-8", "replace")
        raise DeliveryFailed(f"HTTP {status}: {' '.join(detail.split())[:200]}")
    return status


def write_notice_file(directory: Path, row, secrets: tuple[str, ...] | list[str]) -> Path:
    """`<id>.json`: the signed notice as the platform would get it, written atomically."""
    directory = Path(directory)
    target = directory / f"{row['id']}.json"
    record = {
        "id": row["id"],
        "type": row["type"],
        "account_id": row["account_id"],
        "seq": row["seq"],
        "headers": {"Content-Type": "application/json", SIGNATURE_HEADER: None,
                    **signed_headers(row["id"], row["body"], secrets)},
        "body": row["body"],  # the exact signed bytes, as a string
    }
    tmp = directory / f".{row['id']}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DeliveryFailed(f"cannot write {target.name}: {exc}") from exc
    return target


def _transmit(runtime, row) -> str:
    """Deliver one notice by the configured route; return a short description of the success."""
    settings = runtime.settings
    if settings.platform_webhook_url:
        status = post_notice(settings.platform_webhook_url, row["id"], row["body"],
                             settings.platform_webhook_secrets)
        return f"HTTP {status}"
    path = write_notice_file(settings.notice_outbox_dir, row, settings.platform_webhook_secrets)
    return f"file {path.name}"


# -- delivery -----------------------------------------------------------------------------
def deliver_account_notices(runtime, account_id: str, now: datetime | None = None) -> int:
    """Deliver the due notices of one account in seq order; stop at the first failure.

    Returns how many were delivered. Safe to run concurrently for one account: each notice
    is claimed before it is sent, and only the head of the queue is ever claimable.
    """
    delivered = 0
    for _ in range(MAX_PER_RUN):
        head = _claim_head(runtime, account_id, now or utcnow())
        if head is None:
            break
        bind_ids_of(head)  # its lines name the notice's case, invoice and customer (those it has)
        attempt = head["attempts"] + 1
        bound = log.bind(notice_id=head["id"], type=head["type"], account_id=account_id,
                         seq=head["seq"], attempt=attempt)
        try:
            how = _transmit(runtime, head)
        except DeliveryFailed as exc:
            DELIVERY.retry_later(runtime.db, head["id"], attempt, head["created_at"], str(exc), bound, utcnow())
            break
        except Exception as exc:
            DELIVERY.retry_later(runtime.db, head["id"], attempt, head["created_at"], f"{type(exc).__name__}: {exc}",
                                 bound, utcnow())
            raise
        DELIVERY.finish(runtime.db, head["id"], attempt, status="sent", delivered_at=utcnow(), lease_until=None)
        bound.info("notice.delivered", via=how)
        delivered += 1
    return delivered


def _claim_head(runtime, account_id: str, now: datetime):
    """The account's lowest pending notice, claimed (pending -> sending) if it is due; else None."""
    db = runtime.db
    notices = db.table("platform_notices")
    with db.transaction() as conn:
        while True:
            head = conn.execute(
                select(notices).where(notices.c.account_id == account_id,
                                      notices.c.status.in_(("pending", "sending")))
                .order_by(notices.c.seq).limit(1)
            ).mappings().first()
            if head is None:
                return None
            if head["status"] == "pending":
                if head["next_attempt_at"] > now:
                    return None  # backing off: the sweeper re-enqueues the account when it is due
                break
            if head["lease_until"] is not None and head["lease_until"] >= now:
                return None  # another worker is delivering it (and will continue the queue)
            if not DELIVERY.exhausted(head["attempts"], head["created_at"], now):
                break
            # Interrupted again and again (a worker dying on it): stop, visibly, and move on.
            DELIVERY.give_up_interrupted(db, conn, head, log, account_id=account_id)
        claimed = DELIVERY.claim(db, conn, head, utcnow())
    return dict(head) if claimed else None


def sweep_notices(runtime, now: datetime) -> int:
    """Enqueue delivery for every account whose head notice is due (or whose lease lapsed).

    Only heads count: a later notice being "due" must not trigger an early retry of an earlier
    one in backoff. `now` may be a ticked instant; heads due by then are made due now.
    """
    db = runtime.db
    notices = db.table("platform_notices")
    heads = (select(notices.c.account_id, func.min(notices.c.seq).label("seq"))
             .where(notices.c.status.in_(("pending", "sending")))
             .group_by(notices.c.account_id).subquery())
    with db.transaction() as conn:
        rows = conn.execute(
            select(notices.c.id, notices.c.account_id, notices.c.status, notices.c.next_attempt_at)
            .join(heads, and_(notices.c.account_id == heads.c.account_id, notices.c.seq == heads.c.seq))
            .where(DELIVERY.sweepable(notices, now))
            .order_by(notices.c.next_attempt_at).limit(SWEEP_BATCH)
        ).mappings().all()
        DELIVERY.mark_swept(conn, notices, rows, now, utcnow())
    accounts = sorted({row["account_id"] for row in rows})
    for account_id in accounts:
        runtime.actors.deliver_notices.send(account_id)
    if accounts:
        log.info("notices.swept", accounts=len(accounts))
    return len(accounts)
