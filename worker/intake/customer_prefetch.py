"""Know the customer before the handler runs: fetch it from Stripe when an invoice is all we heard of it.

Why: an invoice payload names its customer (id, email, name) but not the customer's metadata,
and the policy may take the owner of record (`[recipient] source = "customer.metadata.<key>"`)
or the exclusion (`[exclude] customer_metadata`) from that metadata. When no customer.* event
reached us before an invoice's first failure, the customer row is only inferred from the invoice
(handlers.facts.ensure_customer: source_created == 0, metadata {}): the day-0 email would be
refused for want of a recipient and an excluded customer would be dunned.

So, for an event that names a customer we know nothing authoritative about (no row, or an
inferred one), and when STRIPE_API_KEY is set, processing calls `ensure_customer_known` on the
event as a plain SELECT read it, before the handler's transaction (network I/O never runs inside a
transaction):
  - GET /v1/customers/:id through worker.stripe.gateway (short timeout, one network retry);
  - a transient error (network, 429, 5xx) raises StripeUnavailable: the event is marked failed
    and the process_event actor retries it later (no handler ran, nothing to undo);
  - a 404 (or Stripe's `deleted: true` answer) records the customer as deleted: no mail;
  - another refusal (401/403: a key or permission problem) is logged as an error and the event
    is handled as without a key: an operator problem must not stop invoices being recorded.
Without STRIPE_API_KEY nothing is fetched and one warning per process says that a
metadata-based recipient or exclusion then needs customer.* events.

Ordering (newest wins, handlers.facts.upsert_customer): the fetched customer is upserted with
`created` = the `created` of the event that made us fetch it, not our clock's fetch instant.
  - Every customer change made before that event is in the answer, and so is every change made
    between the event and the fetch. A customer event older than the triggering event loses to
    the snapshot (right: the snapshot holds it and whatever followed).
  - A customer event at or after the triggering event wins, even one made before the fetch
    (already in the snapshot): it may briefly put back a state older than the snapshot, but
    Stripe sends an event for every change, so the newest of them carries the current state
    and wins last. The row converges on Stripe's truth whatever the order of delivery.
  - Labelling with the fetch instant instead would compare our clock with Stripe's: a change
    made within the skew after the fetch would lose to the snapshot for good (until the next
    change). With the event's `created`, every comparison stays on Stripe's clock.
  - An invoice event carrying an expanded customer is upserted by its handler with the same
    `created`: a tie, which the event wins (Stripe's own payload).
A customer fetched once has source_created > 0 and is not fetched again for ordinary events.
But an `invoice.payment_failed` that will open a case (no case for its invoice yet) reads the
customer again whatever we know (issue 12: the owner of record is followed even when it changed
without a customer.* event reaching us); the step runner reads it before every step
(handlers/verification.py).
"""

from __future__ import annotations

import functools
import threading

import structlog
from sqlalchemy import Table, bindparam, select

from handlers.context import StripeEvent
from handlers.facts import upsert_customer
from handlers.registry import handler_for
from handlers.stripe_objects import metadata_of
from worker.observe.log_context import ids_from_event_object
from worker.observe.logs import mask_email
from worker.pure.message_log import outside_message
from worker.stripe.gateway import StripeGateway, StripeRejected, StripeUnavailable
from worker.infra.unit_of_work import unit_of_work

log = structlog.get_logger("worker.intake.customer_prefetch")

# A webhook worker waits on this call before it can handle the event: fail fast, let the actor retry.
PREFETCH_TIMEOUT_SECONDS = (3.0, 8.0)  # connect, read
PREFETCH_NETWORK_RETRIES = 1

_warned_without_key = threading.Event()


def ensure_customer_known(runtime, event: StripeEvent) -> str:
    """Fetch and record the event's customer when we only know it from an invoice; return what happened.

    Outcomes: "not_applicable" (no handler, no customer named, or the event carries the customer
    itself), "known", "no_api_key", "other_mode" (a live event with a test key or the reverse: a
    404 there would not mean deleted), "fetched", "deleted", "rejected". Raises StripeUnavailable
    on a transient Stripe error.
    """
    customer_id = _customer_named_by(event)
    if customer_id is None:
        return "not_applicable"
    key = runtime.settings.stripe_api_key
    if not key:  # checked first: without a key the queries below decide nothing (no statement spent)
        _warn_once_without_key(runtime)
        return "no_api_key"
    known = _is_known(runtime, customer_id)
    if known and not _opens_case(runtime, event):
        return "known"
    if _key_livemode(key) not in (None, event.livemode):
        log.warning("customer_prefetch.skipped_other_mode", customer_id=customer_id, livemode=event.livemode)
        return "other_mode"

    try:
        customer = _gateway(runtime).retrieve_customer(customer_id)
    except StripeUnavailable as exc:
        if not known:
            raise
        # a refresh of an owner we know: the case opens with it (each step reads Stripe again)
        log.warning("customer_prefetch.refresh_unavailable", customer_id=customer_id, error=str(exc)[:300])
        return "refresh_unavailable"
    except StripeRejected as exc:
        if exc.status != 404 or exc.code != "resource_missing":  # an unknown URL is no deletion
            log.error("customer_prefetch.rejected", customer_id=customer_id, status=exc.status,
                      code=exc.code, error=str(exc)[:300])
            return "rejected"
        customer = {"id": customer_id, "object": "customer", "deleted": True}
    if customer.get("id") != customer_id:
        customer = {**customer, "id": customer_id}
    with unit_of_work(runtime, log=log) as ctx:
        upsert_customer(ctx, customer, event.created)
    outcome = "deleted" if customer.get("deleted") else "fetched"
    log.info("customer_prefetch.recorded", customer_id=customer_id, outcome=outcome,
             email=mask_email(customer.get("email")), metadata_keys=sorted(metadata_of(customer)))
    return outcome


def note_without_key(runtime, event: StripeEvent) -> None:
    """Without STRIPE_API_KEY (processing then reads the event inside the handler's transaction
    only): the once-per-process warning ensure_customer_known would give. No I/O."""
    if not runtime.settings.stripe_api_key and _customer_named_by(event) is not None:
        _warn_once_without_key(runtime)


def _customer_named_by(event: StripeEvent) -> str | None:
    """The customer id of a handled event whose payload does not already hold the whole customer."""
    if handler_for(event.type) is None:
        return None
    obj = (event.payload.get("data") or {}).get("object")
    if not isinstance(obj, dict) or obj.get("object") == "customer":
        return None  # a customer.* event is itself the authoritative customer
    if isinstance(obj.get("customer"), dict) and "metadata" in obj["customer"]:
        return None  # an expanded customer: the handler records it
    return ids_from_event_object(obj).get("customer_id")


def _is_known(runtime, customer_id: str) -> bool:
    """True when a customer event or an earlier fetch wrote the row (not just an invoice)."""
    from handlers.facts import is_erased

    with runtime.db.reading() as conn:
        source_created = runtime.db.run(conn, _source_created(runtime.db.table("customers")),
                                        {"b_customer": customer_id}).scalar()
        # An erased customer is never fetched again: that would bring its email and metadata back.
        return bool(source_created) or is_erased(conn, runtime.db, customer_id)


def _opens_case(runtime, event: StripeEvent) -> bool:
    """True for a payment failure of an invoice that has no case yet (the case opens with it)."""
    if event.type != "invoice.payment_failed" or not runtime.settings.stripe_api_key:
        return False
    invoice_id = (event.payload.get("data") or {}).get("object", {}).get("id")
    with runtime.db.reading() as conn:
        return runtime.db.run(conn, _case_of_invoice(runtime.db.table("cases")), {"b_invoice": invoice_id}).first() is None


@functools.lru_cache(maxsize=16)
def _source_created(customers: Table):
    return select(customers.c.source_created).where(customers.c.id == bindparam("b_customer"))


@functools.lru_cache(maxsize=16)
def _case_of_invoice(cases: Table):
    return select(cases.c.id).where(cases.c.invoice_id == bindparam("b_invoice"))


def _key_livemode(key: str) -> bool | None:
    """True for a live key, False for a test key, None when the prefix says neither."""
    if key.startswith(("sk_live_", "rk_live_")):
        return True
    if key.startswith(("sk_test_", "rk_test_")):
        return False
    return None


def _gateway(runtime) -> StripeGateway:
    """A gateway of its own with a short timeout (the jobs' gateway waits longer on writes)."""
    def build(rt) -> StripeGateway:
        return StripeGateway(rt.settings.stripe_api_key, rt.settings.stripe_api_base,
                             max_network_retries=PREFETCH_NETWORK_RETRIES, timeout=PREFETCH_TIMEOUT_SECONDS)
    return runtime.service("stripe_customer_prefetch", build)


def _policy_reads_metadata(policy) -> bool:
    return policy.recipient_source.startswith("customer.metadata.") or bool(policy.exclude_customer_metadata)


def _warn_once_without_key(runtime) -> None:
    if _warned_without_key.is_set() or not _policy_reads_metadata(runtime.policy):
        return
    _warned_without_key.set()
    with outside_message():  # about this process's settings, not the event that met it first
        log.warning("customer_prefetch.disabled_without_api_key",
                    recipient_source=runtime.policy.recipient_source,
                    exclude_keys=sorted(runtime.policy.exclude_customer_metadata),
                    hint="a customer known only from its invoices has no metadata: the metadata-based "
                         "recipient and exclusion need customer.* events or STRIPE_API_KEY")
