"""Deliver outbox emails once: claim the row, hand the message to a sender, record the outcome.

The `emails` row is the truth, delivered under a lease (worker/delivery/leased_delivery.py: claim, backoff,
give-up, finish and sweep, shared with platform notices): two workers holding the same id cannot
both send, a worker that dies mid-send leaves a lapsed lease the sweeper re-enqueues, and the
retry state lives in the row, so a retry survives restarts and `dunning stats` can show it.
Only emails are cancelled before a try: to an erased customer, or a step of a case that ended.

Senders (one interface, two implementations, chosen by SENDGRID_API_KEY):
- SendGridSender: the SendGrid v3 API, body built by the official SDK, POSTed on the process's
  pooled keep-alive client (worker/infra/http_pool.py) with an explicit timeout (the SDK has none); 429/5xx/network errors
  transient, any other 4xx permanent.
- FileOutboxSender: one RFC 5322 `.eml` file per email in EMAIL_OUTBOX_DIR, named by the email
  id and written atomically, so a retry rewrites the same file instead of adding a second one.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy as email_policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Protocol

import structlog
from sqlalchemy import Table, and_, bindparam, exists, func, or_, select, update

from handlers import dedupe_keys
from worker.pure.clock import utcnow
from worker.delivery.emails import one_line
from worker.delivery.leased_delivery import Leased
from worker.pure.sql_terms import none_of
from worker.infra.driver_sql import run
from worker.pure.message_log import bind_ids_of
from worker.observe.logs import mask_email

log = structlog.get_logger("worker.delivery.email_delivery")

LEASE = timedelta(minutes=5)            # a send takes seconds; after this the row may be retried
ENQUEUE_LEASE = timedelta(seconds=60)  # a queued send message is not queued again before this
BACKOFF_BASE = timedelta(seconds=60)
BACKOFF_CAP = timedelta(hours=4)
RETRY_FOR = timedelta(days=3)           # transient failures are retried at least this long...
MIN_ATTEMPTS = 12                       # ...and at least this many times, then the row is failed
SENDGRID_TIMEOUT = 15.0                 # seconds; the SDK's default is to wait forever
SWEEP_BATCH = 500
# RFC 5322 with CRLF; headers kept on one line up to the hard 998 limit (subjects are capped at
# 200 characters), which spares readers the stdlib's odd fold before the first word.
EML_POLICY = email_policy.SMTP.clone(max_line_length=998)
DELIVERY = Leased("emails", "email", lease=LEASE, enqueue_lease=ENQUEUE_LEASE, backoff_base=BACKOFF_BASE,
                  backoff_cap=BACKOFF_CAP, retry_for=RETRY_FOR, min_attempts=MIN_ATTEMPTS)


class SendError(Exception):
    """Base of the errors a sender raises."""


class TransientSendError(SendError):
    """Raised when the provider may accept the message later (429, 5xx, timeout, network)."""


class PermanentSendError(SendError):
    """Raised when the provider rejected the message itself (a 4xx other than 429): no retry."""


@dataclass(frozen=True)
class OutgoingEmail:
    """What a sender needs of an `emails` row."""

    id: str
    template: str
    recipient: str
    subject: str
    text: str
    html: str
    invoice_id: str | None
    customer_id: str | None
    case_id: str | None
    created_at: datetime
    invoice_ids: str | None = None  # an account email: every invoice it covers, comma-separated

    @classmethod
    def from_row(cls, row) -> "OutgoingEmail":
        return cls(id=row["id"], template=row["template"], recipient=row["recipient"],
                   subject=row["subject"], text=row["body_text"], html=row["body_html"],
                   invoice_id=row["invoice_id"], customer_id=row["customer_id"],
                   case_id=row["case_id"], created_at=row["created_at"], invoice_ids=row.get("invoice_ids"))

    def dunning_headers(self) -> dict[str, str]:
        """X-Dunning-Template / -Invoice / -Customer: on every message, one safe line each."""
        return {
            "X-Dunning-Template": header_value(self.template),
            "X-Dunning-Invoice": header_value(self.invoice_ids or self.invoice_id or "none"),
            "X-Dunning-Customer": header_value(self.customer_id or "none"),
        }


class EmailSender(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> str | None:
        """Deliver the email; return the provider's message id. Raise a SendError on failure."""


# -- message building ---------------------------------------------------------------------
_CONTROL_TO_SPACE = {code: " " for code in (*range(32), 127)}


def header_value(value: str) -> str:
    """A header value on one line: CR, LF and other control characters cannot smuggle headers.
    (`str.translate`: a character-by-character join took 7.6 µs for a subject, 4.4 µs now.)"""
    return one_line(str(value).translate(_CONTROL_TO_SPACE))[:500]


@functools.lru_cache(maxsize=8)
def sender_address(email_from: str) -> Address:
    """EMAIL_FROM ('Billing <billing@example.com>') as a validated Address (name on one line).
    Parsed once per value (the standard library's parser makes some 60 calls a parse)."""
    name, addr = parseaddr(email_from or "")
    if not addr or "@" not in addr:
        raise PermanentSendError(f"EMAIL_FROM is not an address: {email_from!r}")
    username, domain = addr.rsplit("@", 1)
    return Address(display_name=header_value(name), username=username, domain=domain)


def message_id_for(email: OutgoingEmail, sender: Address) -> str:
    """Stable per email: a retry produces the same Message-ID (receivers may dedupe on it)."""
    return f"<{email.id}@{sender.domain or 'dunning.invalid'}>"


def build_mime(email: OutgoingEmail, email_from: str, reply_to: str | None = None) -> EmailMessage:
    """The RFC 5322 message: text and HTML alternatives, dunning headers, stable Message-ID.

    email.message.EmailMessage refuses CR/LF in any header value (ValueError), a second guard
    behind header_value().
    """
    sender = sender_address(email_from)
    msg = EmailMessage(policy=email_policy.default)
    msg["From"] = sender
    msg["To"] = Address(addr_spec=email.recipient)
    msg["Subject"] = header_value(email.subject)
    msg["Date"] = format_datetime(email.created_at.replace(tzinfo=timezone.utc))
    msg["Message-ID"] = message_id_for(email, sender)
    if reply_to:  # EMAIL_REPLY_TO: the owner's answer reaches a person, not the sending address
        msg["Reply-To"] = sender_address(reply_to)
    for name, value in email.dunning_headers().items():
        msg[name] = value
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    return msg


# -- senders ------------------------------------------------------------------------------
class FileOutboxSender:
    """One `<email id>.eml` per message in a folder (local runs, tests, a mail pickup directory)."""

    name = "file"

    def __init__(self, directory: Path, email_from: str):
        self.directory = Path(directory)
        self.email_from = email_from

    def path_for(self, email_id: str) -> Path:
        return self.directory / f"{email_id}.eml"

    def send(self, email: OutgoingEmail) -> str | None:
        try:
            msg = build_mime(email, self.email_from, getattr(self, "reply_to", None))
            data = msg.as_bytes(policy=EML_POLICY)
        except (ValueError, HeaderParseError) as exc:  # a header that cannot be made safe
            raise PermanentSendError(f"cannot build the message: {exc}") from exc
        target = self.path_for(email.id)
        tmp = self.directory / f".{email.id}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # atomic: readers see the old file or the whole new one
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransientSendError(f"cannot write {target.name}: {exc}") from exc
        return msg["Message-ID"]


class SendGridSender:
    """SendGrid v3 mail/send through the official SDK (SENDGRID_API_HOST honoured, explicit timeout)."""

    name = "sendgrid"

    def __init__(self, api_key: str, email_from: str, host: str | None = None,
                 timeout: float = SENDGRID_TIMEOUT):
        from sendgrid import __version__ as sdk_version
        self.email_from = email_from
        self.timeout = timeout
        # The SDK builds the body (payload below); the POST goes through the process's pooled
        # keep-alive client (worker/infra/http_pool.py), not the SDK's new connection per email.
        self.url = (host or "https://api.sendgrid.com").rstrip("/") + "/v3/mail/send"
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": f"sendgrid/{sdk_version};python"}

    def payload(self, email: OutgoingEmail) -> dict:
        """The v3 JSON body: categories and custom_args name the template and the invoice."""
        from sendgrid.helpers.mail import Category, CustomArg, From, Header, Mail, To
        sender = sender_address(self.email_from)
        mail = Mail(from_email=From(sender.addr_spec, sender.display_name or None),
                    to_emails=To(email.recipient), subject=header_value(email.subject),
                    plain_text_content=email.text, html_content=email.html)
        for name, value in email.dunning_headers().items():
            mail.header = Header(name, value)
        if getattr(self, "reply_to", None):  # EMAIL_REPLY_TO
            from sendgrid.helpers.mail import ReplyTo
            reply = sender_address(self.reply_to)
            mail.reply_to = ReplyTo(reply.addr_spec, reply.display_name or None)
        mail.category = [Category("dunning"), Category(header_value(email.template))]
        args = {"email_id": email.id, "template": email.template, "invoice_id": email.invoice_id,
                "customer_id": email.customer_id, "case_id": email.case_id}
        mail.custom_arg = [CustomArg(key, header_value(value)) for key, value in args.items() if value]
        return mail.get()

    def send(self, email: OutgoingEmail) -> str | None:
        import json

        from worker.infra import http_pool
        try:
            body = json.dumps(self.payload(email)).encode("utf-8")
        except ValueError as exc:
            raise PermanentSendError(f"cannot build the message: {exc}") from exc
        try:
            response = http_pool.post(self.url, body, self.headers, self.timeout, read_limit=2048)
        except http_pool.NETWORK_ERRORS as exc:
            raise TransientSendError(f"SendGrid unreachable: {type(exc).__name__}: {exc}") from exc
        status = response.status
        if 200 <= status < 300:
            return response.headers.get("x-message-id")
        detail = _short(response.body)
        if status == 429 or status >= 500 or status < 400:
            raise TransientSendError(f"SendGrid HTTP {status}: {detail}")
        raise PermanentSendError(f"SendGrid HTTP {status}: {detail}")


def _short(body) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return one_line(body or "")[:300]


def email_sender(runtime) -> EmailSender:
    """The process's sender: SendGrid when SENDGRID_API_KEY is set, else the .eml folder."""
    def build(rt):
        s = rt.settings
        if s.sendgrid_api_key:
            sender = SendGridSender(s.sendgrid_api_key, s.email_from, s.sendgrid_api_host)
        else:
            sender = FileOutboxSender(s.email_outbox_dir, s.email_from)
        sender.reply_to = getattr(s, "email_reply_to", None)  # EMAIL_REPLY_TO (issue 14)
        return sender
    return runtime.service("email_sender", build)


# -- delivery -----------------------------------------------------------------------------
def backoff(attempts: int) -> timedelta:
    """60 s, 2 min, 4 min ... capped at 4 h, after the n-th failed attempt."""
    return DELIVERY.backoff(attempts)


def deliver_email(runtime, email_id: str, now: datetime | None = None) -> str:
    """Send one outbox email if it is due and nobody else holds it; return the row's status after.

    Raises only on unexpected errors (after recording them on the row as a transient failure).
    """
    now = now or utcnow()
    db = runtime.db
    emails = db.table("emails")
    # The usual case, claimed in one statement: committed on its own (autocommit), with no round
    # trips for BEGIN and COMMIT. The long path reads the row locked in a transaction of its own.
    with db.autocommit() as conn:
        row = run(conn, _plain_claim(emails, db.table("erasures"), db.table("cases")),
                  {"b_id": email_id, "b_now": now, "b_lease_until": utcnow() + LEASE}).mappings().first()
    if row is not None:
        bind_ids_of(row)
        attempt, claimed = row["attempts"], True
    else:
        with db.transaction() as conn:
            attempt, claimed, outcome, row = _claim_after_checks(runtime, conn, email_id, now)
        if outcome is not None:
            return outcome
    if not claimed:
        log.info("email.claimed_elsewhere", email_id=email_id)
        return "sending"

    email = OutgoingEmail.from_row(row)
    sender = email_sender(runtime)
    bound = log.bind(email_id=email_id, template=email.template, invoice_id=email.invoice_id,
                     customer_id=email.customer_id, recipient=mask_email(email.recipient),
                     sender=sender.name, attempt=attempt)
    try:
        message_id = sender.send(email)
    except PermanentSendError as exc:
        DELIVERY.finish(db, email_id, attempt, status="failed", last_error=str(exc)[:2000], lease_until=None)
        bound.error("email.failed_permanently", error=str(exc)[:300])
        if email.case_id and str(exc).startswith("SendGrid HTTP"):  # the provider refused this address
            from worker.delivery.reachability import mark_rejected_email
            mark_rejected_email(runtime, email_id, str(exc))
        return "failed"
    except TransientSendError as exc:
        return DELIVERY.retry_later(db, email_id, attempt, row["created_at"], str(exc), bound, utcnow())
    except Exception as exc:
        DELIVERY.retry_later(db, email_id, attempt, row["created_at"], f"{type(exc).__name__}: {exc}", bound,
                             utcnow())
        raise
    _record_sent(db, email_id, attempt, message_id, bound)
    bound.info("email.sent", provider_message_id=message_id)
    return "sent"


def _claim_after_checks(runtime, conn, email_id: str, now: datetime):
    """The long path, when the one-statement claim did not take the row: read it locked, decide
    (skip, cancel, drop ended invoices, give up, claim). Returns (attempt, claimed, outcome, row):
    an outcome (the row's status) when there is nothing to send."""
    db = runtime.db
    emails = db.table("emails")
    # Locked: a step joining this account email (worker/delivery/account_emails.py) finishes first or waits.
    row = conn.execute(db.lock(_email_and_its_checks(db, email_id))).mappings().first()
    if row is None:
        log.warning("email.unknown", email_id=email_id)
        return 0, False, "missing", None
    # The rest of this message's lines name the email's case, invoice and customer (from this
    # row: no lookup of its own for log fields).
    bind_ids_of(row)
    claimable = (row["status"] == "pending" and row["next_attempt_at"] <= now) or (
        row["status"] == "sending" and row["lease_until"] is not None and row["lease_until"] < now)
    if not claimable:
        log.info("email.skipped", email_id=email_id, status=row["status"])
        return 0, False, row["status"], row
    if not row["recipient"] or row["customer_erased"]:
        # Customer-facing mail never goes to an erased customer, whatever was queued before.
        conn.execute(update(emails).where(emails.c.id == email_id, emails.c.status == row["status"])
                     .values(status="cancelled", lease_until=None, last_error="not sent: customer erased"))
        log.info("email.cancelled_erased_customer", email_id=email_id)
        return 0, False, "cancelled", row
    ended = _case_ended_state(runtime, conn, row)
    if ended:
        # A reminder still undelivered when its case ended (SendGrid down for hours, say) must
        # not reach the owner after the thank-you: "service disrupted" after "payment received".
        conn.execute(update(emails).where(emails.c.id == email_id, emails.c.status == row["status"])
                     .values(status="cancelled", lease_until=None,
                             last_error=f"not sent: the case ended ({ended}) before delivery"))
        log.info("email.cancelled", email_id=email_id, case_state=ended)
        return 0, False, "cancelled", row
    if row["kind"] == dedupe_keys.ACCOUNT_STEP:  # issue 14: paid invoices leave the list
        from worker.delivery.account_emails import without_ended_invoices
        row = without_ended_invoices(runtime, conn, row)
    if row["status"] == "sending" and DELIVERY.exhausted(row["attempts"], row["created_at"], now):
        DELIVERY.give_up_interrupted(db, conn, row, log)
        return 0, False, "failed", row
    attempt = row["attempts"] + 1
    return attempt, DELIVERY.claim(db, conn, row, utcnow()), None, row


@functools.lru_cache(maxsize=16)
def _plain_claim(emails: Table, erasures: Table, cases: Table):
    """pending and due -> sending, one attempt more, a lease; RETURNING the row: the usual
    delivery in one statement. It takes only a row the long path would claim with no other act:
    a recipient, a customer not erased, a lone step email whose case has not ended, or mail of no
    case. Anything else (a lapsed lease, an account email, a cancellation) is left to the long path.
    Built once, with bound parameters. Like the long path's SELECT ... FOR UPDATE, the UPDATE
    waits for a step joining this email and then sees the row as joined (no longer a lone step's)."""
    from handlers.dunning import TERMINAL_STATES
    case_state = select(cases.c.state).where(cases.c.id == emails.c.case_id).scalar_subquery()
    return (update(emails)
            .where(emails.c.id == bindparam("b_id"), emails.c.status == "pending",
                   emails.c.next_attempt_at <= bindparam("b_now"), emails.c.recipient.is_not(None),
                   emails.c.recipient != "",
                   ~exists().where(erasures.c.customer_id == emails.c.customer_id),
                   or_(emails.c.case_id.is_(None),
                       and_(emails.c.kind == dedupe_keys.STEP,
                            none_of(func.coalesce(case_state, ""), TERMINAL_STATES)),
                       none_of(emails.c.kind, (dedupe_keys.STEP, dedupe_keys.ACCOUNT_STEP))))
            .values(status="sending", attempts=emails.c.attempts + 1, lease_until=bindparam("b_lease_until"),
                    enqueued_at=None)
            .returning(*emails.c))


def _email_and_its_checks(db, email_id: str):
    """The email row, whether its customer is erased, and its case's state: one statement, not three."""
    emails, erasures, cases = db.table("emails"), db.table("erasures"), db.table("cases")
    erased = exists().where(erasures.c.customer_id == emails.c.customer_id)
    case_state = select(cases.c.state).where(cases.c.id == emails.c.case_id).scalar_subquery()
    return select(emails, erased.label("customer_erased"), case_state.label("case_state")) \
        .where(emails.c.id == email_id)


def _case_ended_state(runtime, conn, row) -> str | None:
    """The end state of the case of a schedule-step email (emails.kind "step"), if ended; for an
    account email ("account-step"), the end of its last covered case (it goes out while any invoice
    it covers is still unpaid)."""
    if not row["case_id"] or row["kind"] not in (dedupe_keys.STEP, dedupe_keys.ACCOUNT_STEP):
        return None
    from handlers.dunning import TERMINAL_STATES
    from worker.delivery.account_emails import covered_case_ids
    if row["kind"] == dedupe_keys.STEP:  # its case's state came with the row
        return row["case_state"] if row["case_state"] in TERMINAL_STATES else None
    case_ids = covered_case_ids(conn, runtime.db.table("email_steps"), row["id"]) or [row["case_id"]]
    cases = runtime.db.table("cases")
    states = list(conn.execute(select(cases.c.state).where(cases.c.id.in_(case_ids))).scalars())
    if states and all(state in TERMINAL_STATES for state in states):
        return states[0]
    return None


def _record_sent(db, email_id: str, attempt: int, message_id: str | None, bound) -> None:
    """Record a send the provider accepted, retrying while the database is unreachable.

    The message is out: if this record were lost, the lapsed lease would make the sweeper send it
    again. So keep trying for (almost) the whole lease before giving up (raising: the row then
    stays `sending` and, in the worst case, is sent twice: at-least-once, never lost).
    """
    import time as _time

    from worker.infra.db import DatabaseUnavailable

    deadline = _time.monotonic() + LEASE.total_seconds() * 0.8
    delay = 0.5
    while True:
        try:
            DELIVERY.finish(db, email_id, attempt, status="sent", sent_at=utcnow(),
                    provider_message_id=message_id, lease_until=None)
            return
        except DatabaseUnavailable as exc:
            if _time.monotonic() + delay > deadline:
                raise
            bound.warning("email.record_sent_retrying", error=str(exc)[:200], retry_in=delay)
            _time.sleep(delay)
            delay = min(delay * 2, 10.0)


def sweep_emails(runtime, now: datetime) -> int:
    """Re-enqueue due pending emails and `sending` ones whose lease lapsed (a worker died).

    `now` may be a ticked instant (`dunning tick --at`): rows due by then are made due now, so the
    sender (which runs on the real clock) will not wait out a backoff the operator skipped.
    """
    db = runtime.db
    emails = db.table("emails")
    with db.transaction() as conn:
        rows = conn.execute(
            select(emails.c.id, emails.c.status, emails.c.next_attempt_at)
            .where(DELIVERY.sweepable(emails, now))
            .order_by(emails.c.next_attempt_at).limit(SWEEP_BATCH)
        ).mappings().all()
        DELIVERY.mark_swept(conn, emails, rows, now, utcnow())
    for row in rows:
        runtime.actors.send_email.send(row["id"])
    if rows:
        log.info("emails.swept", count=len(rows))
    return len(rows)
