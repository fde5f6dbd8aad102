"""One email per account and step (issue 14): several unpaid invoices of one customer, one email.

Each invoice keeps its own case, timers and disruption deadline (handlers/steps.py); only the
*emails* of steps that fall due together are merged. Exactly-once moves from "one email per case
step" to "each (invoice, step) is satisfied by exactly one email": `email_steps` holds one row per
case step, keyed `case:<case id>:step:<n>` (handlers.dedupe_keys.email_step: the key a step email
always had), naming the email that satisfied it. The caller holds the case locked; this module then
takes the customer's account-emails lock (a PostgreSQL advisory lock until commit). A step that falls due:

1. is satisfied when its row exists already (an account email covered it): nothing is sent;
   a lone unpaid invoice's step email is written as before, its dedupe key its claim (no row);
2. joins the account's email of the same template that is still unsent (pending, never attempted),
   locked FOR UPDATE: the sender locks the row before claiming it (worker/delivery/email_delivery.py), so it
   sends either the body before the join (and the join then finds nothing to join) or the body
   after it, never a stale one. The email is rendered again, its dedupe key becomes
   `account:<customer>:<template>:<invoice>@<step>,...` (handlers.dedupe_keys.account_step_email:
   account, template, set of invoice steps; emails.kind "account-step") and X-Dunning-Invoice names
   every invoice it covers (emails.invoice_ids);
3. else gets its own email; a lone invoice's looks exactly as before (first failures processed at
   the same instant by parallel workers may each go alone: a writer sees only committed cases). When another open case of
   the customer has a step of the same template due within the policy's `[emails]
   coalesce_seconds`, the new email is held (not queued) for that long so the other step can join;
   the last expected step to join releases it at once, else the sweeper sends it when the window
   lapses. A step that comes later still gets its own email (listing every unpaid invoice): never
   dropped, never twice.

Every step email lists every unpaid invoice of the customer (open cases whose invoice is not final)
with its amount and hosted page, and the total owed per currency (never summed across currencies).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import asdict, dataclass

import structlog
from babel.numbers import format_decimal
from sqlalchemy import and_, bindparam, func, or_, select, text, update

from handlers import dedupe_keys
from worker.pure.sql_terms import one_of
from worker.infra.driver_sql import run
from worker.pure.clock import utcnow
from worker.pure.money import DEFAULT_LOCALE, exponent, format_amount_with_code, to_major
from handlers.policy import coalesce_window

log = structlog.get_logger("worker.delivery.account_emails")

FINAL_INVOICE_STATUSES = ("paid", "void", "uncollectible")


@dataclass(frozen=True)
class ListedInvoice:
    """One unpaid invoice as the step templates show it (`invoices` items; templates/emails/_invoices.*).

    The step templates' `extra` (worker/delivery/email_contract.py StepExtra; None in the context when not given):
      invoices        list of ListedInvoice (as dicts): every unpaid invoice of the account
      invoice_totals  list of str, one per currency: "USD 169.00" (code, then the amount)
    The step templates show the list only when it holds more than one invoice.
    """

    invoice_id: str
    number: str
    amount: str            # "$49.00 USD": formatted with the currency's exponent
    url: str | None        # the invoice's hosted page (checked by email_context.safe_url)




# -- the step email -----------------------------------------------------------------------------
def add_step_email(ctx, case: dict, index: int, template: str, *, delay_seconds: int = 0) -> str | None:
    """Satisfy step `index` of the (locked) case by an email; the id of the email that satisfies it
    (this one, or an account email that covered it already), None when refused (no owner address, erased)."""
    from worker.delivery import outbox
    key = dedupe_keys.email_step(case["id"], index)
    satisfied_by, others = _look(ctx, case, key)
    if satisfied_by:
        log.info("case.step_email_satisfied", case_id=case["id"], step=index, template=template, email_id=satisfied_by)
        return satisfied_by
    own = dedupe_keys.step_email(case["id"], index)  # its value is `key`: a lone email's key is its claim
    if not others:  # a lone unpaid invoice: its email as before, its dedupe key is its claim
        return outbox.add_case_email(ctx, template, case["id"], own, delay_seconds=delay_seconds, case=case,
                                     checked=True)
    _lock_account_emails(ctx, case["customer_id"])
    listing = _listing(ctx, case["customer_id"])
    held = _held_email(ctx, case, template) if len(listing["invoices"]) > 1 else None
    if held is not None:
        return _join(ctx, held, case, index, key)
    expected = _expected_steps(ctx, case["customer_id"], template, covered={case["id"]})
    hold = int(coalesce_window(ctx.policy).total_seconds()) if expected else 0
    email_id = outbox.add_case_email(ctx, template, case["id"], own, delay_seconds=max(delay_seconds, hold),
                                     case=case, extra=_extra(listing), enqueue=not hold, checked=True)
    if email_id is None:
        return None
    _claim(ctx, key, email_id, case, index)
    if hold:
        log.info("email.held_for_account", email_id=email_id, template=template, customer_id=case["customer_id"],
                 expected=[c["invoice_id"] for c in expected], hold_seconds=hold)
    return email_id


def _look(ctx, case: dict, key: str) -> tuple[str | None, int]:
    """(the email satisfying the step already, how many other open cases the customer has): one statement."""
    row = run(ctx.conn, _look_statement(ctx.table("email_steps"), ctx.table("emails"), ctx.table("cases")),
              {"b_key": key, "b_customer": case["customer_id"], "b_case": case["id"]}).mappings().one()
    return row["claimed"] or row["own"], int(row["others"] or 0)


@functools.lru_cache(maxsize=16)
def _look_statement(steps, emails, cases):
    """`_look`'s statement, built once (bound parameters)."""
    from handlers.dunning import OPEN_STATES
    claimed = select(steps.c.email_id).where(steps.c.dedupe_key == bindparam("b_key")).scalar_subquery()
    own = select(emails.c.id).where(emails.c.dedupe_key == bindparam("b_key")).scalar_subquery()
    others = (select(func.count()).select_from(cases)
              .where(cases.c.customer_id == bindparam("b_customer"), cases.c.id != bindparam("b_case"),
                     one_of(cases.c.state, OPEN_STATES)).scalar_subquery())
    return select(claimed.label("claimed"), own.label("own"), others.label("others"))


def _lock_account_emails(ctx, customer_id: str) -> None:
    """One writer of a customer's step emails at a time (until commit): two invoices' steps running
    in parallel would each miss the other's uncommitted email and hold their own. SQLite already
    serializes every write transaction (BEGIN IMMEDIATE)."""
    if ctx.db.is_sqlite:
        return
    run(ctx.conn, _ACCOUNT_EMAILS_LOCK, {"key": f"account-emails:{customer_id}"})


_ACCOUNT_EMAILS_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")  # built once (worker.infra.driver_sql)


def is_satisfied(ctx, key: str) -> bool:
    """True when an email satisfied this step (its email_steps row, or a step email written before them)."""
    steps, emails = ctx.table("email_steps"), ctx.table("emails")
    if ctx.conn.execute(select(steps.c.email_id).where(steps.c.dedupe_key == key)).first() is not None:
        return True
    return ctx.conn.execute(select(emails.c.id).where(emails.c.dedupe_key == key)).first() is not None


def covered_case_ids(conn, steps_table, email_id: str) -> list[str]:
    """The cases whose steps this email satisfies (empty for mail that is not a step email)."""
    return list(conn.execute(select(steps_table.c.case_id).where(steps_table.c.email_id == email_id)
                             .order_by(steps_table.c.created_at, steps_table.c.case_id)).scalars())


# -- joining an email still held ----------------------------------------------------------------
def _held_email(ctx, case: dict, template: str) -> dict | None:
    """The customer's unsent step email of this template about other invoices, locked (the sender
    waits for this transaction). A lone invoice's step email (emails.kind "step") qualifies."""
    row = run(ctx.conn, ctx.db.lock(_held_statement(ctx.table("emails"), ctx.table("email_steps"))),
              {"b_customer": case["customer_id"], "b_template": template, "b_case": case["id"]}
              ).mappings().first()
    return dict(row) if row else None


@functools.lru_cache(maxsize=16)
def _held_statement(emails, steps):
    """`_held_email`'s statement, built once (bound parameters); the caller locks it."""
    stmt = (select(emails).where(
        emails.c.customer_id == bindparam("b_customer"), emails.c.template == bindparam("b_template"),
        emails.c.status == "pending", emails.c.attempts == 0,
        or_(emails.c.kind == dedupe_keys.ACCOUNT_STEP,
            and_(emails.c.kind == dedupe_keys.STEP, emails.c.case_id != bindparam("b_case"))),
        emails.c.id.not_in(select(steps.c.email_id).where(steps.c.case_id == bindparam("b_case"))))
        .order_by(emails.c.created_at, emails.c.id).limit(1))
    return stmt


def _join(ctx, email: dict, case: dict, index: int, key: str) -> str | None:
    """Add the case's step to the held email: claim it, render the email again, release it when complete."""
    steps = ctx.table("email_steps")
    if not _covered(ctx, email["id"]):  # a lone invoice's email: its own key was its claim, now a row
        _claim(ctx, dedupe_keys.email_step(email["case_id"], email["step"]), email["id"],
               {"id": email["case_id"], "invoice_id": email["invoice_id"], "customer_id": email["customer_id"]},
               email["step"])
    _claim(ctx, key, email["id"], case, index)
    covered = _covered(ctx, email["id"])
    release = email["enqueued_at"] is None and not _expected_steps(
        ctx, email["customer_id"], email["template"], covered={row["case_id"] for row in covered})
    if not _render_again(ctx, email, covered, release=release):
        # the owner became unreachable or was erased since: refused as a lone email would be
        ctx.conn.execute(steps.delete().where(steps.c.dedupe_key == key))
        return None
    log.info("email.joined_by_account", email_id=email["id"], template=email["template"],
             customer_id=email["customer_id"], invoice_id=case["invoice_id"], step=index,
             covers=",".join(row["invoice_id"] for row in covered), released=release)
    return email["id"]


def without_ended_invoices(runtime, conn, row) -> dict:
    """At delivery (the sender holds the row locked): an account email some of whose invoices were
    paid, voided or written off since it was written is rendered again without them (it goes out
    for the others; one whose invoices all ended is cancelled by the sender). Returns the row to send."""
    from worker.infra.unit_of_work import context_in
    ctx = context_in(runtime, conn, log=log)  # nothing is queued here (release=False)
    covered = _covered(ctx, row["id"])
    if all(item["open"] for item in covered) or not any(item["open"] for item in covered):
        return row
    if _render_again(ctx, dict(row), covered, release=False):
        log.info("email.ended_invoices_dropped", email_id=row["id"], template=row["template"],
                 dropped=[item["invoice_id"] for item in covered if not item["open"]])
    emails = ctx.table("emails")
    return conn.execute(select(emails).where(emails.c.id == row["id"])).mappings().first()


def _covered(ctx, email_id: str) -> list[dict]:
    """The steps an email satisfies, oldest first, with whether their case is still open."""
    from handlers.dunning import OPEN_STATES
    steps, cases = ctx.table("email_steps"), ctx.table("cases")
    rows = ctx.conn.execute(
        select(steps.c.case_id, steps.c.invoice_id, steps.c.step, cases.c.state)
        .select_from(steps.outerjoin(cases, cases.c.id == steps.c.case_id))
        .where(steps.c.email_id == email_id).order_by(steps.c.created_at, steps.c.invoice_id)).mappings().all()
    return [{**row, "open": row["state"] in OPEN_STATES} for row in rows]


def _render_again(ctx, email: dict, covered: list[dict], *, release: bool) -> bool:
    """Render the held email for the steps it covers (its main invoice: the first still unpaid) and
    the account's unpaid invoices now; False when the owner can no longer be mailed."""
    from worker.delivery import outbox
    key = dedupe_keys.account_step_email(email["customer_id"], email["template"],
                                         [(row["invoice_id"], row["step"]) for row in covered])
    unpaid = [row for row in covered if row["open"]] or covered
    main = outbox._load(ctx, "cases", unpaid[0]["case_id"])
    composed = outbox.compose_email(ctx, email["template"], key, _extra(_listing(ctx, email["customer_id"])),
                                    case=main, customer_id=email["customer_id"], invoice_id=main["invoice_id"])
    if composed is None:
        return False
    recipient, rendered, _shown = composed
    values = {"dedupe_key": key.value, "kind": key.kind, "step": key.step, "recipient": recipient,
              "subject": rendered.subject, "body_text": rendered.text, "body_html": rendered.html,
              "case_id": main["id"], "invoice_id": main["invoice_id"],
              "invoice_ids": ",".join(row["invoice_id"] for row in unpaid) if len(unpaid) > 1 else None}
    if release:
        values.update(next_attempt_at=utcnow(), enqueued_at=utcnow())
    emails = ctx.table("emails")
    ctx.conn.execute(update(emails).where(emails.c.id == email["id"]).values(**values))
    if release:
        outbox.enqueue_send(ctx, email["id"])
    return True


def _claim(ctx, key: str, email_id: str, case: dict, index: int) -> None:
    """Record that `email_id` satisfies the step. Every writer of a case's steps holds the case
    locked, so the key is free; a clash means a concurrent writer broke that rule: roll back."""
    inserted = ctx.db.insert_new(ctx.conn, ctx.table("email_steps"), {
        "dedupe_key": key, "email_id": email_id, "case_id": case["id"], "invoice_id": case["invoice_id"],
        "customer_id": case["customer_id"], "step": index, "created_at": utcnow()}, "dedupe_key")
    if not inserted:
        raise RuntimeError(f"step {key} was satisfied concurrently")


def _expected_steps(ctx, customer_id: str, template: str, *, covered: set[str]) -> list[dict]:
    """Other open cases of the customer whose next step sends `template` within the coalescing window."""
    window = coalesce_window(ctx.policy)
    if not window:
        return []
    rows = run(ctx.conn, _expected_statement(ctx.table("cases")),
               {"b_customer": customer_id, "b_until": ctx.clock + window}).mappings().all()
    expected = []
    for row in rows:
        if row["id"] in covered:
            continue
        step = ctx.policy.schedule_named(row["schedule"]).step(row["next_step"])
        if step is not None and step.email == template and not is_satisfied(
                ctx, dedupe_keys.email_step(row["id"], row["next_step"])):
            expected.append(dict(row))
    return expected


@functools.lru_cache(maxsize=16)
def _expected_statement(cases):
    """`_expected_steps`' statement, built once (bound parameters)."""
    from handlers.dunning import OPEN_STATES
    return select(cases).where(cases.c.customer_id == bindparam("b_customer"), one_of(cases.c.state, OPEN_STATES),
                               cases.c.next_step.is_not(None), cases.c.next_step_at <= bindparam("b_until"))


# -- the list of unpaid invoices ----------------------------------------------------------------
def _extra(listing: dict) -> dict:
    return {"invoices": listing["invoices"], "invoice_totals": listing["totals"]}


def _listing(ctx, customer_id: str) -> dict:
    """Every unpaid invoice of the customer (an open case, its invoice not final) and the totals,
    written as the owner's language writes money (worker.pure.locales.owner_locale, issue 14)."""
    from worker.delivery import outbox
    from worker.delivery.email_context import safe_url
    from worker.delivery.email_locale import babel_locale
    from worker.pure.locales import owner_locale
    locale = babel_locale(owner_locale(ctx.policy, outbox._load(ctx, "customers", customer_id)))
    rows = run(ctx.conn, _listing_statement(ctx.table("cases"), ctx.table("invoices")),
               {"b_customer": customer_id}).mappings().all()
    listed, sums = [], OrderedDict()
    for row in rows:
        if row["status"] in FINAL_INVOICE_STATUSES:
            continue
        owed = row["amount_remaining"] if row["status"] == "open" and row["amount_remaining"] else row["amount_due"]
        currency = (row["currency"] or "").lower()
        listed.append(asdict(ListedInvoice(
            invoice_id=row["invoice_id"], number=row["number"] or row["invoice_id"],
            amount=format_amount_with_code(owed, currency, locale),
            url=safe_url(row["hosted_invoice_url"], ctx.settings))))
        sums[currency] = sums.get(currency, 0) + int(owed or 0)
    return {"invoices": listed, "totals": [format_total(amount, currency, locale) for currency, amount in sums.items()]}


@functools.lru_cache(maxsize=16)
def _listing_statement(cases, invoices):
    """`_listing`'s statement, built once (a bound parameter)."""
    from handlers.dunning import OPEN_STATES
    return (select(cases.c.invoice_id, cases.c.currency, cases.c.amount_due, invoices.c.number,
                   invoices.c.hosted_invoice_url, invoices.c.status, invoices.c.amount_remaining)
            .select_from(cases.outerjoin(invoices, invoices.c.id == cases.c.invoice_id))
            .where(cases.c.customer_id == bindparam("b_customer"), one_of(cases.c.state, OPEN_STATES))
            .order_by(cases.c.first_failed_at, cases.c.invoice_id))


def format_total(amount_minor: int, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """'USD 169.00': the currency code, then the amount with its exponent (one total per currency)."""
    digits = exponent(currency)
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return f"{currency.upper()} {format_decimal(to_major(amount_minor, currency), format=pattern, locale=locale)}"
