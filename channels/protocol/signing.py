"""Sign 32-byte EIP-712 digests with a private key: 65 bytes r‖s‖v, low s, v in {27, 28}.

Used by payers (vouchers, refunds, ERC-3009 deposits) and by the gateway (receipts,
ClaimBatch). Deterministic (RFC 6979), so signatures equal eth-account's byte for byte.

    >>> signer = Signer(DEV_KEYS[1])          # the well-known anvil dev key #1
    >>> sig = signer.sign_digest(voucher_digest(31337, settlement, cid, 1_000))
    >>> recover_signer(digest, sig) == signer.address
    True
"""

from __future__ import annotations

from coincurve import PrivateKey

from .eip712 import checksum_address, keccak256

__all__ = ["Signer"]


class Signer:
    """An Ethereum key that signs digests; `address` is checksummed, `address_bytes` raw."""

    __slots__ = ("_key", "address", "address_bytes")

    def __init__(self, private_key: str | bytes) -> None:
        if isinstance(private_key, str):
            text = private_key.strip().removeprefix("0x")
            if len(text) != 64:
                raise ValueError("private key must be 32 bytes as 64 hex digits")
            private_key = bytes.fromhex(text)
        if len(private_key) != 32:
            raise ValueError(f"private key must be 32 bytes, got {len(private_key)}")
        self._key = PrivateKey(private_key)  # rejects 0 and >= curve order
        public = self._key.public_key.format(compressed=False)[1:]
        self.address_bytes: bytes = keccak256(public)[12:]
        self.address: str = checksum_address(self.address_bytes)

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r‖s‖v signature of a 32-byte digest (libsecp256k1 always yields low s)."""
        if len(digest) != 32:
            raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))

    def private_key_hex(self) -> str:
        """The key as 0x-prefixed hex, for a transaction signer that needs it (web3's)."""
        return "0x" + self._key.secret.hex()

    def __repr__(self) -> str:  # never the key
        return f"Signer({self.address})"
