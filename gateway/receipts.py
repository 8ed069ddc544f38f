"""Our signed EIP-712 receipts for paid answers (``PAYMENT-RESPONSE`` ``extra.receipt``).

A receipt binds the channel, what was asked (``requestDigest`` = sha256 of the request
body), what was answered (``resultDigest`` = sha256 of the response body), the model version
that answered (its 32-byte content hash), the charge and the channel's cumulative charge.
Its leaf is EIP-712 ``hashStruct(Receipt)``. The receiver-authorizer key signs
``ReceiptBatch(bytes32 root)``, the Merkle root over the leaves of every receipt answered in
the same event-loop tick, under the domain ``{name: "paychan Receipt", version: "1",
chainId, verifyingContract: settlement}``; each receipt carries its proof (sorted-pair
keccak, as OpenZeppelin's ``MerkleProof``). Under load one signature serves dozens of
answers; alone, a receipt is a batch of one with an empty proof::

    signer = ReceiptSigner(key, chain_id=31337, settlement=CANONICAL_SETTLEMENT)
    receipt_json = await signer.sign_batched(channel_id, request_sha256, response_body, version, 1000, 5000)
    receipt_json = signer.sign(channel_id, request_sha256, response_body, version, 1000, 5000)  # now, alone

``request_sha256`` is the sha256 of the request body, hashed once per request by the caller
(the Idempotency-Key fingerprint uses the same digest).

The encodings (leaf, Merkle pair, batch digest) are ``channels.protocol``'s; a payer checks a
receipt with ``channels.protocol.verify_receipt``.
"""

from __future__ import annotations

import asyncio
import hashlib

from channels.protocol import Signer, merkle_parent, receipt_batch_digest, receipt_leaf

__all__ = ["ReceiptSigner"]


class ReceiptSigner:
    """Signs receipts with the receiver-authorizer key; returns each receipt's JSON text.

    ``max_batch`` bounds a batch (and so a proof to ``ceil(log2(max_batch))`` hashes).
    """

    __slots__ = ("_pending", "_signer", "address", "chain_id", "max_batch", "settlement")

    def __init__(self, signer: Signer, *, chain_id: int, settlement: str, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._signer = signer
        self.chain_id = chain_id
        self.settlement = settlement
        self.address = signer.address
        self.max_batch = max_batch
        self._pending: list[tuple[bytes, str, asyncio.Future[str]]] = []

    def sign(
        self,
        channel_id: bytes,
        request_sha256: bytes,
        response_body: bytes,
        model_version: bytes,
        charged: int,
        cumulative: int,
    ) -> str:
        """The receipt signed now, alone (a batch of one: empty proof)."""
        leaf, head = self._leaf(channel_id, request_sha256, response_body, model_version, charged, cumulative)
        return f'{head}"proof":[],"signature":"0x{self._sign_root(leaf).hex()}"}}'

    def sign_batched(
        self,
        channel_id: bytes,
        request_sha256: bytes,
        response_body: bytes,
        model_version: bytes,
        charged: int,
        cumulative: int,
    ) -> asyncio.Future[str]:
        """The receipt, signed together with every other receipt asked for in this tick.

        Returns at once a future of the receipt's JSON (the leaf is hashed now): the batch is
        signed by a callback scheduled on the loop (after the callbacks that are ready now),
        or at once when it reaches ``max_batch``, so no answer waits for later work. A
        future cancelled before its batch is signed leaves the batch.
        """
        leaf, head = self._leaf(channel_id, request_sha256, response_body, model_version, charged, cumulative)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        pending = self._pending
        pending.append((leaf, head, fut))
        if len(pending) == 1:
            loop.call_soon(self._flush)
        elif len(pending) >= self.max_batch:
            self._flush()
        return fut

    def _leaf(
        self,
        channel_id: bytes,
        request_sha256: bytes,
        response_body: bytes,
        model_version: bytes,
        charged: int,
        cumulative: int,
    ) -> tuple[bytes, str]:
        """The leaf (``hashStruct(Receipt)``) and the receipt's JSON up to its proof."""
        req = request_sha256
        res = hashlib.sha256(response_body).digest()
        leaf = receipt_leaf(channel_id, req, res, model_version, charged, cumulative)
        # Hand-formatted: every value is hex or decimal, so no escaping is ever needed, and this
        # is several microseconds cheaper than building a dict and json.dumps on every request.
        head = (
            f'{{"channelId":"0x{channel_id.hex()}","requestDigest":"0x{req.hex()}",'
            f'"resultDigest":"0x{res.hex()}","modelVersion":"0x{model_version.hex()}",'
            f'"chargedAmount":"{charged}","cumulativeCharged":"{cumulative}",'
        )
        return leaf, head

    def _sign_root(self, root: bytes) -> bytes:
        return self._signer.sign_digest(receipt_batch_digest(self.chain_id, self.settlement, root))

    def _flush(self) -> None:
        batch = [item for item in self._pending if not item[2].done()]  # skip the cancelled
        self._pending = []
        if not batch:
            return
        try:
            root, proofs = _merkle([leaf for leaf, _, _ in batch])
            tail = f'"signature":"0x{self._sign_root(root).hex()}"}}'
        except BaseException as exc:  # noqa: BLE001 - every waiter learns why
            for _, _, fut in batch:
                fut.set_exception(exc)
            raise
        for (_, head, fut), proof in zip(batch, proofs):
            fut.set_result(f'{head}"proof":[{proof}],{tail}')


def _merkle(leaves: list[bytes]) -> tuple[bytes, list[str]]:
    """The root over ``leaves`` and each leaf's proof as JSON list items (``"0x..","0x.."``).

    Pairs hash as ``merkle_parent`` (sorted); an odd node out is carried up unchanged, so
    its proof has no entry for that level.
    """
    levels: list[list[bytes]] = [leaves]
    while len(levels[-1]) > 1:
        level = levels[-1]
        parents: list[bytes] = []
        for j in range(0, len(level) - 1, 2):
            parents.append(merkle_parent(level[j], level[j + 1]))
        if len(level) % 2:
            parents.append(level[-1])
        levels.append(parents)
    texts = [[f'"0x{node.hex()}"' for node in nodes] for nodes in levels[:-1]]
    proofs = []
    for i in range(len(leaves)):
        items: list[str] = []
        pos = i
        for row in texts:
            sibling = pos ^ 1
            if sibling < len(row):
                items.append(row[sibling])
            pos >>= 1
        proofs.append(",".join(items))
    return levels[-1][0], proofs
