"""Stripe's decline codes grouped by what the owner should do about them, one readable table.

Why: an expired card, an empty account, a stolen card and a payment waiting for 3-D Secure need
different advice ("add a new card", "top up or use another card", "confirm with your bank"); the
same sentence for all of them sends owners the wrong way. Stripe's codes are listed at
https://docs.stripe.com/declines/codes (the `decline_code` of a card error) and
https://docs.stripe.com/error-codes (the `code`: expired_card, incorrect_cvc, processing_error,
authentication_required ... arrive there instead of in decline_code).

Stripe asks that lost, stolen, fraudulent and pickup declines be shown to the customer as a generic
decline (the card holder may not be the one who reported it): the `lost_or_stolen` group's words
therefore say only "the bank will not accept this card, use another one".

A code not in the table falls into `do_not_honor` (Stripe's own advice for unknown declines: treat
them as generic).
"""

from __future__ import annotations

from worker.delivery.email_locale import N_

EXPIRED_CARD = "expired_card"
INSUFFICIENT_FUNDS = "insufficient_funds"
DO_NOT_HONOR = "do_not_honor"
LOST_OR_STOLEN = "lost_or_stolen"
AUTHENTICATION_REQUIRED = "authentication_required"
PROCESSING_ERROR = "processing_error"
GROUPS = (EXPIRED_CARD, INSUFFICIENT_FUNDS, DO_NOT_HONOR, LOST_OR_STOLEN, AUTHENTICATION_REQUIRED,
          PROCESSING_ERROR)

# code -> group. One line per code; the comment says why it sits there when that is not obvious.
DECLINE_GROUPS: dict[str, str] = {
    # The card's dates are wrong or past: a new card (or the new expiry) is the only fix.
    "expired_card": EXPIRED_CARD,
    "invalid_expiry_month": EXPIRED_CARD,
    "invalid_expiry_year": EXPIRED_CARD,
    "incorrect_number": EXPIRED_CARD,        # the saved details no longer match a card: enter them again
    "invalid_number": EXPIRED_CARD,
    "incorrect_cvc": EXPIRED_CARD,
    "invalid_cvc": EXPIRED_CARD,
    "incorrect_zip": EXPIRED_CARD,
    "new_account_information_available": EXPIRED_CARD,  # the bank issued new card details
    # Money, limits and counts: the same card may work later, or another card now.
    "insufficient_funds": INSUFFICIENT_FUNDS,
    "card_velocity_exceeded": INSUFFICIENT_FUNDS,   # over the card's limit
    "withdrawal_count_limit_exceeded": INSUFFICIENT_FUNDS,
    "invalid_amount": INSUFFICIENT_FUNDS,           # the amount exceeds what the card allows
    # The bank refused without a reason it will share: call the bank or use another card.
    "do_not_honor": DO_NOT_HONOR,
    "generic_decline": DO_NOT_HONOR,
    "card_declined": DO_NOT_HONOR,                  # the error code when decline_code is absent
    "call_issuer": DO_NOT_HONOR,
    "do_not_try_again": DO_NOT_HONOR,
    "no_action_taken": DO_NOT_HONOR,
    "not_permitted": DO_NOT_HONOR,
    "restricted_card": DO_NOT_HONOR,
    "revocation_of_all_authorizations": DO_NOT_HONOR,
    "revocation_of_authorization": DO_NOT_HONOR,
    "security_violation": DO_NOT_HONOR,
    "service_not_allowed": DO_NOT_HONOR,
    "stop_payment_order": DO_NOT_HONOR,
    "transaction_not_allowed": DO_NOT_HONOR,
    "card_not_supported": DO_NOT_HONOR,
    "currency_not_supported": DO_NOT_HONOR,
    "invalid_account": DO_NOT_HONOR,
    "duplicate_transaction": DO_NOT_HONOR,
    "approve_with_id": DO_NOT_HONOR,
    "merchant_blacklist": DO_NOT_HONOR,             # Stripe: present as a generic decline
    "testmode_decline": DO_NOT_HONOR,
    # Reported lost or stolen, or flagged as fraud: shown as "use another card" (see the docstring).
    "lost_card": LOST_OR_STOLEN,
    "stolen_card": LOST_OR_STOLEN,
    "pickup_card": LOST_OR_STOLEN,
    "fraudulent": LOST_OR_STOLEN,
    # The bank wants the card holder to confirm (3-D Secure, a PIN): a new card is not the fix.
    "authentication_required": AUTHENTICATION_REQUIRED,
    "offline_pin_required": AUTHENTICATION_REQUIRED,
    "online_or_offline_pin_required": AUTHENTICATION_REQUIRED,
    "incorrect_pin": AUTHENTICATION_REQUIRED,
    "invalid_pin": AUTHENTICATION_REQUIRED,
    "pin_try_exceeded": AUTHENTICATION_REQUIRED,
    # Nothing wrong with the card: a network or bank hiccup; the next automatic retry may succeed.
    "processing_error": PROCESSING_ERROR,
    "issuer_not_available": PROCESSING_ERROR,
    "reenter_transaction": PROCESSING_ERROR,
    "try_again_later": PROCESSING_ERROR,
    "card_decline_rate_limit_exceeded": PROCESSING_ERROR,
}

# group -> (reason shown to the owner, advice). Plain sentences; templates add the card and dates.
# English msgids: worker.delivery.email_context translates them into the email's language (worker/delivery/locale).
ADVICE: dict[str, tuple[str, str]] = {
    EXPIRED_CARD: (N_("The card has expired or its details are out of date."),
                   N_("Add a card with current details: the payment cannot succeed with the saved ones.")),
    LOST_OR_STOLEN: (N_("The bank will not accept this card any more."),
                     N_("Add a different card: this one cannot be charged again.")),
    INSUFFICIENT_FUNDS: (N_("The bank declined the payment for insufficient funds or a card limit."),
                         N_("Make sure the amount is available on the card, or add another card. "
                            "We retry automatically.")),
    DO_NOT_HONOR: (N_("The bank declined the payment without giving a reason."),
                   N_("Call the number on the back of your card and ask the bank to allow the payment, "
                      "or add another card.")),
    AUTHENTICATION_REQUIRED: (
        N_("Your bank asks you to confirm this payment."),
        N_("Open the invoice page and confirm the payment with your bank (3-D Secure); saving the same card "
           "again does not help.")),
    PROCESSING_ERROR: (N_("The payment failed on the bank's side, not because of your card."),
                       N_("No change is needed: we retry automatically. If it fails again, add another card.")),
}


def group_of(*codes: str | None) -> str | None:
    """The group of the first known code (decline_code before code); None when no code is given."""
    given = [c.strip().lower() for c in codes if isinstance(c, str) and c.strip()]
    for code in given:
        if code in DECLINE_GROUPS:
            return DECLINE_GROUPS[code]
    return DO_NOT_HONOR if given else None


def advice_for(group: str | None) -> tuple[str | None, str | None]:
    """(reason, advice) for a group; (None, None) when the reason is unknown."""
    return ADVICE.get(group or "", (None, None))
