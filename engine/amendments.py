"""Deciding what a merchant changes on a charge or a refund after the fact:
Stripe's `POST /v1/charges/{id}` and `POST /v1/refunds/{id}`.

Neither moves money nor any status, so neither has a table of its own; each
checks its shape, finds what it names, and records every resulting field
(not a diff), as an intent's update does.

A charge shows its intent's description and metadata until it is updated
for the first time; from then on it keeps its own (`ChargeDetails`, kept on
the intent by attempt id). Metadata merges as everywhere: an empty value
removes its key. An empty description clears it.
"""

from __future__ import annotations

from engine import charges
from engine.commands import Shipping, UpdateCharge, UpdateRefund
from engine.decisions import Decision, refuse
from engine.events import ChargeUpdated, RefundMetadataUpdated
from engine.records import ChargeDetails, PaymentIntent
from engine.results import Result
from engine.shapes import DESCRIPTION_CHARS_MAX, check_metadata, check_text

RECEIPT_EMAIL_CHARS_MAX = 800
# Stripe's bound on each text of a shipping address.
SHIPPING_TEXT_CHARS_MAX = 5000
# Stripe's values for what the merchant reports of a charge's fraud.
FRAUD_USER_REPORTS = frozenset({"fraudulent", "safe"})


def _merged(current: dict[str, str], changes: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in {**current, **changes}.items() if value != ""}


def _email_shaped(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    return bool(at and local and "." in domain and not any(character.isspace() for character in email))


def _shipping_shaped(shipping: Shipping) -> bool:
    address = shipping.address
    texts = (shipping.carrier, shipping.phone, shipping.tracking_number, address.city, address.country, address.line1, address.line2,
             address.postal_code, address.state)
    return bool(shipping.name) and check_text(shipping.name, SHIPPING_TEXT_CHARS_MAX) and all(check_text(text, SHIPPING_TEXT_CHARS_MAX) for text in texts)


def decide_charge_update(intent: PaymentIntent, command: UpdateCharge) -> Decision:
    """Records the charge's description, metadata, receipt email, fraud
    report and shipping after the update (shipping replaced whole, as sent);
    refused on any of them out of shape, or a charge the intent does not
    have."""
    if not check_metadata(command.metadata) or not check_text(command.description, DESCRIPTION_CHARS_MAX):
        return refuse(Result.metadata_invalid, "metadata" if command.description is None else "description")
    email = command.receipt_email
    if email is not None and email != "" and not (check_text(email, RECEIPT_EMAIL_CHARS_MAX) and _email_shaped(email)):
        return refuse(Result.email_invalid, "receipt_email")
    if command.fraud_user_report is not None and command.fraud_user_report not in FRAUD_USER_REPORTS:
        return refuse(Result.fraud_report_invalid, "fraud_details[user_report]")
    if command.shipping is not None and not _shipping_shaped(command.shipping):
        return refuse(Result.shipping_invalid, "shipping")
    attempt = charges.charge_attempt(intent, command.attempt_id)
    if attempt is None:
        return refuse(Result.charge_missing, "charge")
    current = charges.details(intent, attempt)
    metadata = _merged(current.metadata, command.metadata)
    if not check_metadata(metadata):
        return refuse(Result.metadata_invalid, "metadata")
    description = current.description if command.description is None else (command.description or None)
    receipt_email = current.receipt_email if email is None else (email or None)
    fraud_user_report = command.fraud_user_report or current.fraud_user_report
    shipping = command.shipping or current.shipping
    details = ChargeDetails(
        attempt_id=attempt.id,
        description=description,
        metadata=metadata,
        receipt_email=receipt_email,
        fraud_user_report=fraud_user_report,
        shipping=shipping,
    )
    return Decision(result=Result.ok, events=(ChargeUpdated(intent_id=intent.id, details=details),))


def decide_refund_update(intent: PaymentIntent, command: UpdateRefund) -> Decision:
    """Records a refund's metadata after the update, in any status; refused
    on metadata out of shape or a refund the intent does not have."""
    if not check_metadata(command.metadata):
        return refuse(Result.metadata_invalid, "metadata")
    refund = intent.refund(command.refund_id)
    if refund is None:
        return refuse(Result.refund_missing, "refund")
    metadata = _merged(refund.metadata, command.metadata)
    if not check_metadata(metadata):
        return refuse(Result.metadata_invalid, "metadata")
    return Decision(result=Result.ok, events=(RefundMetadataUpdated(intent_id=intent.id, refund_id=refund.id, metadata=metadata),))
