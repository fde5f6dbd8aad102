"""What the platform may read: account status, the accounts to sweep, an account's notice feed.

Pushed notices can be missed (the platform's endpoint down past the retry window, a rotated
secret answered 401); these reads let the platform reconcile by pulling instead. They read the
same rows the notices come from (`accounts`, `cases`, `platform_notices`), so what is pulled
and what was pushed cannot disagree. Times are unix seconds, as in the notices' bodies.

Pagination is keyset, never offset: the accounts list is ordered by id and its cursor is the
last id served (opaque, base64url), the notice feed by `seq` (`after` = the last seq seen), so
a sweep neither skips nor repeats a row while accounts change under it.
"""

from __future__ import annotations

import base64
import binascii
import json

from sqlalchemy import select

from handlers.dunning import OPEN_STATES
from worker.pure.clock import to_unix

STATUSES = ("active", "disruption_scheduled", "disrupted")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
CURSOR_PREFIX = "acct:"


class BadRequest(ValueError):
    """Raised when a query parameter is malformed or out of range (answered 400)."""


class NotFound(LookupError):
    """Raised when the account is unknown (answered 404)."""


# -- parameters ---------------------------------------------------------------------------
def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_after(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest("after must be a notice seq (an integer >= 0)")
    return int(raw)


def encode_cursor(account_id: str) -> str:
    return base64.urlsafe_b64encode((CURSOR_PREFIX + account_id).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> str | None:
    """The account id a cursor points after; BadRequest for anything this API did not hand out."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) > 512:
            raise ValueError
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("cursor is malformed: pass next_cursor from a previous page") from None
    if not text.startswith(CURSOR_PREFIX) or len(text) == len(CURSOR_PREFIX):
        raise BadRequest("cursor is malformed: pass next_cursor from a previous page")
    return text[len(CURSOR_PREFIX):]


# -- reads --------------------------------------------------------------------------------
def _summary(row) -> dict:
    return {
        "id": row["id"],
        "customer": row["customer_id"],
        "subscription": row["subscription_id"],
        "status": row["status"],
        "disrupt_at": to_unix(row["disrupt_at"]),
        "disrupted_at": to_unix(row["disrupted_at"]),
        "last_notice_seq": int(row["notice_seq"]),
        "updated_at": to_unix(row["updated_at"]),
    }


def account(db, account_id: str) -> dict:
    """One account: its status, dates, open invoices (amount, currency, case state), last seq."""
    accounts, cases = db.table("accounts"), db.table("cases")
    with db.reading(snapshot=True) as conn:
        row = conn.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()
        if row is None:
            raise NotFound(f"no account {account_id}")
        open_cases = conn.execute(
            select(cases.c.invoice_id, cases.c.amount_due, cases.c.currency, cases.c.state, cases.c.disrupt_at)
            .where(cases.c.account_id == account_id, cases.c.state.in_(OPEN_STATES))
            .order_by(cases.c.opened_at, cases.c.invoice_id)).mappings().all()
    return {**_summary(row), "open_invoices": [
        {"invoice": c["invoice_id"], "amount_due": int(c["amount_due"]), "currency": c["currency"],
         "case_state": c["state"], "disrupt_at": to_unix(c["disrupt_at"])} for c in open_cases]}


def list_accounts(db, status: str | None, cursor: str | None, limit: int) -> dict:
    """A page of accounts ordered by id, optionally of one status, after the cursor's account."""
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    after = decode_cursor(cursor)
    accounts = db.table("accounts")
    stmt = select(accounts).order_by(accounts.c.id).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(accounts.c.status == status)
    if after is not None:
        stmt = stmt.where(accounts.c.id > after)
    with db.reading() as conn:
        rows = conn.execute(stmt).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    return {"data": [_summary(r) for r in page], "has_more": more,
            "next_cursor": encode_cursor(page[-1]["id"]) if more else None}


def notice_feed(db, account_id: str, after: int, limit: int) -> dict:
    """The account's notices with seq > after, in seq order: the exact bodies pushed (or not)."""
    accounts, notices = db.table("accounts"), db.table("platform_notices")
    with db.reading(snapshot=True) as conn:
        if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
            raise NotFound(f"no account {account_id}")
        rows = conn.execute(
            select(notices.c.id, notices.c.seq, notices.c.type, notices.c.status, notices.c.body,
                   notices.c.created_at, notices.c.delivered_at)
            .where(notices.c.account_id == account_id, notices.c.seq > after)
            .order_by(notices.c.seq).limit(limit + 1)).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    return {"data": [{
        "id": r["id"], "seq": int(r["seq"]), "type": r["type"], "delivery_status": r["status"],
        "created_at": to_unix(r["created_at"]), "delivered_at": to_unix(r["delivered_at"]),
        "body": r["body"], "notice": json.loads(r["body"]),
    } for r in page], "has_more": more, "next_after": int(page[-1]["seq"]) if more else None}
