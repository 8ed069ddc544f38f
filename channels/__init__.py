"""The x402 batch-settlement protocol core, shared by the gateway and the payer SDK.

>>> import channels
>>> payment = channels.parse_payment_signature(header)
>>> channels.verify_voucher(payment.payload.channel_config, payment.payload.voucher,
...                         chain_id, settlement)
"""

# --- channels-protocol: wire types, EIP-712, verification, signing, payer -----------------
from .eip712 import (
    CANONICAL_ERC3009_COLLECTOR_ADDRESS,
    CANONICAL_SETTLEMENT_ADDRESS,
    ZERO_ADDRESS,
    ClaimEntry,
    channel_id,
    checksum_address,
    claim_batch_digest,
    domain_separator,
    erc3009_deposit_nonce,
    keccak256,
    receipt_digest,
    receipt_hash,
    receipt_root,
    receive_with_authorization_digest,
    refund_digest,
    to_address,
    voucher_digest,
)
from .errors import ErrorCode, PaymentError
from .payer import ChannelHalted, ChannelRecord, Payer, Payment
from .signing import Signer
from .verify import (
    recover_address,
    recover_signer,
    verify_channel_terms,
    verify_deposit_authorization,
    verify_receipt,
    verify_voucher,
)
from .wire import (
    BatchExtra,
    ChannelConfig,
    ChannelStateSnapshot,
    Deposit,
    DepositPayload,
    Erc3009Authorization,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    Receipt,
    RefundPayload,
    ResourceInfo,
    ResponseExtra,
    SchemePayload,
    SettleResponse,
    SignedReceipt,
    Voucher,
    VoucherPayload,
    VoucherStateSnapshot,
    chain_id_of,
    encode_payment_required,
    encode_payment_response,
    encode_payment_signature,
    parse_payment_required,
    parse_payment_response,
    parse_payment_signature,
)

__all__ = [
    # channels-protocol
    "CANONICAL_ERC3009_COLLECTOR_ADDRESS",
    "CANONICAL_SETTLEMENT_ADDRESS",
    "ZERO_ADDRESS",
    "BatchExtra",
    "ChannelConfig",
    "ChannelHalted",
    "ChannelRecord",
    "ChannelStateSnapshot",
    "ClaimEntry",
    "Deposit",
    "DepositPayload",
    "Erc3009Authorization",
    "ErrorCode",
    "Payer",
    "Payment",
    "PaymentError",
    "PaymentPayload",
    "PaymentRequired",
    "PaymentRequirements",
    "Receipt",
    "RefundPayload",
    "ResourceInfo",
    "ResponseExtra",
    "SchemePayload",
    "SettleResponse",
    "SignedReceipt",
    "Signer",
    "Voucher",
    "VoucherPayload",
    "VoucherStateSnapshot",
    "chain_id_of",
    "channel_id",
    "checksum_address",
    "claim_batch_digest",
    "domain_separator",
    "encode_payment_required",
    "encode_payment_response",
    "encode_payment_signature",
    "erc3009_deposit_nonce",
    "is_valid_signature",
    "keccak256",
    "parse_payment_required",
    "parse_payment_response",
    "parse_payment_signature",
    "receipt_digest",
    "receipt_hash",
    "receipt_root",
    "receive_with_authorization_digest",
    "recover_address",
    "recover_signer",
    "refund_digest",
    "to_address",
    "verify_channel_terms",
    "verify_deposit_authorization",
    "verify_receipt",
    "verify_voucher",
    "verify_voucher_eip1271",
    "voucher_digest",
]

_LAZY = {"is_valid_signature", "verify_voucher_eip1271"}  # eip1271 imports web3 (~1 s)


def __getattr__(name: str):
    if name in _LAZY:
        from . import eip1271

        return getattr(eip1271, name)
    raise AttributeError(f"module 'channels' has no attribute {name!r}")


# --- end channels-protocol ---------------------------------------------------------------

# --- channels-ledger: ledger state machine and stores (add imports and `__all__ +=` here) ---
from . import ledger
from .ledger import (
    AcceptInput,
    ChannelState,
    Charge,
    ClaimTarget,
    LedgerPolicy,
    Rejection,
    Reservation,
)
from .store import IdempotencyRecord, Store, open_store

__all__ += [
    "AcceptInput",
    "ChannelState",
    "Charge",
    "ClaimTarget",
    "IdempotencyRecord",
    "LedgerPolicy",
    "Rejection",
    "Reservation",
    "Store",
    "ledger",
    "open_store",
]
# --- end channels-ledger -----------------------------------------------------------------

# --- chain-sync: chain access, watcher, settler (add imports and `__all__ +=` here) -------
# Lazy like eip1271: these modules import web3 (~1 s), which the hot path never needs.
_CHAIN_SYNC = {
    "ChainClient": "chain", "ClaimRow": "chain", "OnChainChannel": "chain", "SimulationFailed": "chain",
    "TxFailed": "chain", "TxPolicy": "chain", "TxResult": "chain", "TxReverted": "chain", "TxTimeout": "chain",
    "JournalEntry": "txjournal", "TxJournal": "txjournal",
    "ChainEvent": "watcher", "Watcher": "watcher",
    "ChainSync": "settler", "LocalLease": "settler", "RedisLease": "settler", "SettlementReport": "settler",
    "Settler": "settler", "SettlerPolicy": "settler", "lease_for": "settler",
    "DepositResult": "facilitator", "Facilitator": "facilitator", "VerifyResult": "facilitator",
}
__all__ += list(_CHAIN_SYNC)
_getattr_before_chain_sync = __getattr__


def __getattr__(name: str):  # extends the lazy lookup above with chain-sync's names
    module = _CHAIN_SYNC.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)
    return _getattr_before_chain_sync(name)


# --- end chain-sync ----------------------------------------------------------------------

# --- sdk-client: the payer SDK over HTTP (channels.client; lazy: aiohttp loads on first use) --
_SDK_CLIENT = {
    "ChainError", "Classification", "ClientError", "GatewayUnreachable", "InputError",
    "PaidResponse", "PaymentClient", "PaymentRefused", "Prediction", "ReceiptInvalid",
    "RequestFailed", "SyncPaymentClient", "WithdrawStatus",
}
__all__ += sorted(_SDK_CLIENT)
_getattr_before_sdk_client = __getattr__


def __getattr__(name: str):  # extends the lazy lookups above with the SDK client's names
    if name in _SDK_CLIENT:
        from . import client

        return getattr(client, name)
    return _getattr_before_sdk_client(name)


# --- end sdk-client ------------------------------------------------------------------------
