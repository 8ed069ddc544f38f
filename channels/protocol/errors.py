"""The x402 batch-settlement error codes and the one typed error that carries them.

Every rejection in `channels` is a `PaymentError` naming the spec's wire code, the JSON
field at fault (dotted path, or None) and a message that says how to fix it:

    >>> err = PaymentError(ErrorCode.VOUCHER_PAYLOAD, "payload.voucher.signature", "not hex")
    >>> err.code == "invalid_batch_settlement_evm_voucher_payload"
    True
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "PaymentError"]

_P = "invalid_batch_settlement_evm_"


class ErrorCode(StrEnum):
    """Wire error codes (the spec's table, plus the x402 core codes for undecodable input).

    Members are `str`, so they compare equal to and serialize as the wire string.
    """

    # x402 core (transport level: the header is not a v2 payment payload at all)
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_X402_VERSION = "invalid_x402_version"

    # scheme `batch-settlement`, EVM binding (spec "Error Codes" table)
    INVALID_SCHEME = _P + "scheme"
    NETWORK_MISMATCH = _P + "network_mismatch"
    MISSING_EIP712_DOMAIN = _P + "missing_eip712_domain"
    PAYLOAD_TYPE = _P + "payload_type"
    CHANNEL_NOT_FOUND = _P + "channel_not_found"
    CHANNEL_ID_MISMATCH = _P + "channel_id_mismatch"
    CHANNEL_ID_INVALID = _P + "channel_id_invalid"
    CHANNEL_STATE_READ_FAILED = _P + "channel_state_read_failed"
    CHANNEL_BUSY = _P + "channel_busy"
    MISSING_CHANNEL = _P + "missing_channel"
    RECEIVER_MISMATCH = _P + "receiver_mismatch"
    RECEIVER_AUTHORIZER_MISMATCH = _P + "receiver_authorizer_mismatch"
    AUTHORIZER_ADDRESS_MISMATCH = _P + "authorizer_address_mismatch"
    TOKEN_MISMATCH = _P + "token_mismatch"
    WITHDRAW_DELAY_MISMATCH = _P + "withdraw_delay_mismatch"
    WITHDRAW_DELAY_OUT_OF_RANGE = _P + "withdraw_delay_out_of_range"
    VOUCHER_SIGNATURE = _P + "voucher_signature"
    VOUCHER_PAYLOAD = _P + "voucher_payload"
    CUMULATIVE_EXCEEDS_BALANCE = _P + "cumulative_exceeds_balance"
    CUMULATIVE_BELOW_CLAIMED = _P + "cumulative_below_claimed"
    CUMULATIVE_AMOUNT_MISMATCH = _P + "cumulative_amount_mismatch"
    CHARGE_EXCEEDS_SIGNED_CUMULATIVE = _P + "charge_exceeds_signed_cumulative"
    INSUFFICIENT_BALANCE = _P + "insufficient_balance"
    VERIFICATION_STATE_UNAVAILABLE = _P + "verification_state_unavailable"
    DEPOSIT_PAYLOAD = _P + "deposit_payload"
    DEPOSIT_SIMULATION_FAILED = _P + "deposit_simulation_failed"
    DEPOSIT_TRANSACTION_FAILED = _P + "deposit_transaction_failed"
    DEPOSIT_BELOW_MIN_DEPOSIT = _P + "deposit_below_min_deposit"
    ERC3009_AUTHORIZATION_REQUIRED = _P + "erc3009_authorization_required"
    RECEIVE_AUTHORIZATION_SIGNATURE = _P + "receive_authorization_signature"
    VALID_AFTER_IN_FUTURE = _P + "payload_authorization_valid_after"
    VALID_BEFORE_EXPIRED = _P + "payload_authorization_valid_before"
    PERMIT2_AUTHORIZATION_REQUIRED = _P + "permit2_authorization_required"
    CLAIM_PAYLOAD = _P + "claim_payload"
    CLAIM_SIMULATION_FAILED = _P + "claim_simulation_failed"
    CLAIM_TRANSACTION_FAILED = _P + "claim_transaction_failed"
    SETTLE_PAYLOAD = _P + "settle_payload"
    SETTLE_SIMULATION_FAILED = _P + "settle_simulation_failed"
    SETTLE_TRANSACTION_FAILED = _P + "settle_transaction_failed"
    NOTHING_TO_SETTLE = _P + "nothing_to_settle"
    UNKNOWN_SETTLE_ACTION = _P + "unknown_settle_action"
    REFUND_PAYLOAD = _P + "refund_payload"
    REFUND_SIMULATION_FAILED = _P + "refund_simulation_failed"
    REFUND_TRANSACTION_FAILED = _P + "refund_transaction_failed"
    REFUND_AMOUNT_INVALID = _P + "refund_amount_invalid"
    REFUND_NO_BALANCE = _P + "refund_no_balance"
    RPC_READ_FAILED = _P + "rpc_read_failed"
    WAIT_FOR_RECEIPT_FAILED = _P + "wait_for_receipt_failed"
    TRANSACTION_REVERTED = _P + "transaction_reverted"


class PaymentError(Exception):
    """A payment problem: wire `code`, the offending `field` (dotted JSON path) and a fix.

    >>> raise PaymentError(ErrorCode.VOUCHER_SIGNATURE, "payload.voucher.signature",
    ...                    "recovered 0xAb.. but payerAuthorizer is 0xCd..")
    """

    __slots__ = ("code", "field", "message")

    def __init__(self, code: ErrorCode, field: str | None, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message
        where = f" [{field}]" if field else ""
        super().__init__(f"{code}{where}: {message}")

    def __reduce__(self) -> tuple[type[PaymentError], tuple[ErrorCode, str | None, str]]:
        # picklable across processes (the ledger runs in several)
        return (type(self), (self.code, self.field, self.message))
