"""The transition table, pair by pair: every (state, trigger) either moves the case and is recorded,
or raises InvalidTransition and changes nothing."""

from __future__ import annotations

import itertools

import pytest

from handlers import dunning
from worker.infra.unit_of_work import context_in
from tests.support.helpers import rows
from worker.pure.clock import utcnow

ALL_PAIRS = list(itertools.product(dunning.STATES, dunning.TRIGGERS))


def insert_case(runtime, state: str, case_id: str = "dc_test_1") -> dict:
    now = utcnow()
    cases = runtime.db.table("cases")
    with runtime.db.transaction() as conn:
        conn.execute(cases.insert().values(
            id=case_id, invoice_id=f"in_{case_id}", customer_id="cus_1", subscription_id="sub_1",
            account_id="sub_1", state=state, schedule="default", currency="usd", amount_due=1000,
            first_failed_at=now, next_step=1 if state in dunning.OPEN_STATES else None,
            next_step_at=now if state in dunning.OPEN_STATES else None, opened_at=now, version=3,
            updated_at=now))
    return rows(runtime, "cases", id=case_id)[0]


def apply_in_transaction(runtime, case_id: str, trigger: str, **kwargs) -> dict:
    with runtime.db.transaction() as conn:
        ctx = context_in(runtime=runtime, conn=conn, now=utcnow())
        case = dunning.lock_case(ctx, case_id=case_id)
        return dunning.apply(ctx, case, trigger, **kwargs)


def test_every_state_and_trigger_is_named_in_one_literal_table():
    states_used = {s for s, _ in dunning.TRANSITIONS} | set(dunning.TRANSITIONS.values())
    triggers_used = {t for _, t in dunning.TRANSITIONS}
    assert states_used == set(dunning.STATES)
    assert triggers_used == set(dunning.TRIGGERS)


def test_no_trigger_leaves_an_end_state():
    assert not [pair for pair in dunning.TRANSITIONS if pair[0] in dunning.TERMINAL_STATES]


@pytest.mark.parametrize("state, trigger", ALL_PAIRS, ids=[f"{s}-{t}" for s, t in ALL_PAIRS])
def test_each_state_and_trigger_pair_moves_as_the_table_says_or_raises_and_changes_nothing(runtime, state, trigger):
    before = insert_case(runtime, state)
    expected = dunning.TRANSITIONS.get((state, trigger))
    if expected is None:
        with pytest.raises(dunning.InvalidTransition) as raised:
            apply_in_transaction(runtime, before["id"], trigger, event_id="evt_x")
        assert raised.value.state == state and raised.value.trigger == trigger
        assert rows(runtime, "cases", id=before["id"])[0] == before
        assert rows(runtime, "case_transitions") == []
        return
    after = apply_in_transaction(runtime, before["id"], trigger, event_id="evt_x", step=None)
    assert after["state"] == expected
    assert after["version"] == before["version"] + 1
    if expected in dunning.TERMINAL_STATES:
        assert after["next_step"] is None and after["next_step_at"] is None and after["closed_at"] is not None
    [recorded] = rows(runtime, "case_transitions")
    assert (recorded["case_id"], recorded["from_state"], recorded["to_state"], recorded["trigger"],
            recorded["event_id"]) == (before["id"], state, expected, trigger, "evt_x")
    assert recorded["at"] is not None


def test_a_timer_transition_records_its_step_and_no_event(runtime):
    case = insert_case(runtime, dunning.FAILING)
    apply_in_transaction(runtime, case["id"], dunning.DISRUPTION_WARNING_DUE, step=2)
    [recorded] = rows(runtime, "case_transitions")
    assert recorded["event_id"] is None and recorded["step"] == 2


def test_a_write_based_on_a_stale_version_is_refused_and_rolled_back(runtime):
    case = insert_case(runtime, dunning.FAILING)
    stale = {**case, "version": case["version"] - 1}
    with pytest.raises(dunning.StaleCase):
        with runtime.db.transaction() as conn:
            ctx = context_in(runtime=runtime, conn=conn, now=utcnow())
            dunning.apply(ctx, stale, dunning.INVOICE_PAID)
    assert rows(runtime, "cases", id=case["id"])[0] == case
    assert rows(runtime, "case_transitions") == []


def test_the_invalid_transition_error_names_the_case_state_and_trigger():
    with pytest.raises(dunning.InvalidTransition, match="case dc_9: trigger 'invoice_paid' is not allowed in"
                                                        " state 'recovered'"):
        dunning.next_state(dunning.RECOVERED, dunning.INVOICE_PAID, "dc_9")
    assert dunning.InvalidTransition.__doc__.startswith("Raised when")


def test_the_table_prints_as_rows_of_from_trigger_to():
    printed = dunning.transition_rows()
    assert len(printed) == len(dunning.TRANSITIONS)
    assert {"from": "failing", "trigger": "invoice_paid", "to": "recovered"} in printed
