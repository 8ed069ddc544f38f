// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {IDepositCollector} from "./IDepositCollector.sol";

/// @title BatchSettlement
/// @notice paychan's implementation of the x402 `batch-settlement` EVM binding: unidirectional payment channels
///         whose cumulative vouchers are claimed in batches and swept to the receiver with `settle`.
/// @dev ABI-identical to the canonical x402BatchSettlement (same functions, structs, events, errors, EIP-712
///      domain and type strings). Written for gas per claimed channel:
///      - no immutables and no constructor state: the EIP-712 domain separator is hashed once per call from
///        `block.chainid` and `address(this)`, so the runtime code can be placed at the canonical address;
///      - the channel id, voucher digest and claim-entry hash are computed once per row, in scratch memory,
///        straight from calldata (memory never grows with the batch except for one word per row);
///      - each row costs one SLOAD and one SSTORE of the packed (balance, totalClaimed) slot; the receiver's
///        `totalClaimed` is written once per run of rows that share (receiver, token), not once per row;
///      - the batch signature is checked after the rows are applied (same transaction, so a bad signature still
///        reverts everything) so the rows are walked once.
contract BatchSettlement is Multicall, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct ChannelState {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct WithdrawalState {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 15 minutes;
    uint40 public constant MAX_WITHDRAW_DELAY = 30 days;

    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant _NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant _VERSION_HASH = keccak256("1");
    uint256 private constant _HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    uint256 private constant _LOW128 = 0xffffffffffffffffffffffffffffffff;
    // keccak256("Claimed(bytes32,address,uint128,uint128)"), a literal so inline assembly can use it
    uint256 private constant _CLAIMED_TOPIC = 0x36bd546bb573e8921fdbfd934bbed62d872796b01792cd240cce27f79dd3eddd;

    // Slot order matters: the Python loader and the off-chain readers address these mappings by slot number.
    mapping(bytes32 channelId => ChannelState) public channels; // slot 0
    mapping(bytes32 channelId => uint256) public refundNonce; // slot 1
    mapping(bytes32 channelId => WithdrawalState) public pendingWithdrawals; // slot 2
    mapping(address receiver => mapping(address token => ReceiverState)) public receivers; // slot 3

    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);
    event EIP712DomainChanged();

    error InvalidChannel();
    error ZeroDeposit();
    error DepositOverflow();
    error InvalidSignature();
    error NotReceiverAuthorizer();
    error NotAuthorizedToClaim();
    error NotAuthorizedToRefund();
    error ClaimExceedsCeiling();
    error ClaimExceedsBalance();
    error WithdrawalAlreadyPending();
    error WithdrawalNotPending();
    error NotAuthorizedToFinalizeWithdraw();
    error WithdrawDelayNotElapsed();
    error NothingToWithdraw();
    error WithdrawAmountExceedsAvailable();
    error WithdrawDelayOutOfRange();
    error EmptyBatch();
    error DepositCollectionFailed();
    error InvalidCollector();
    error InvalidRefundNonce();
    error ZeroRefund();

    // ---------------------------------------------------------------- deposits

    /// @notice Deposits `amount` into the channel of `config`, pulled by `collector` with `collectorData`.
    /// @dev The contract's token balance must grow by exactly `amount` across the collector call: the collector is
    ///      untrusted (anyone may pass one), and the reentrancy guard keeps a nested deposit from being counted
    ///      by both frames' balance checks. The channel is written before the call (checks-effects-interactions).
    ///      The hot path (every deposit) is assembly over calldata: validation, collector call, balance checks and
    ///      both events without memory allocation or ABI re-encoding.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        _checkDeposit(config, amount, collector);
        bytes32 channelId = _channelId(config, _domainSeparator());
        (uint256 slot, uint256 st) = _channelSlot(channelId);
        uint256 balance = st & _LOW128;
        if (amount > _LOW128 - balance) revert DepositOverflow();
        uint256 newBalance = balance + amount;
        assembly ("memory-safe") {
            sstore(slot, or(and(st, not(_LOW128)), newBalance))
        }
        _collect(config, amount, collector, channelId, collectorData);
        bytes32 createdTopic = ChannelCreated.selector;
        bytes32 depositedTopic = Deposited.selector;
        assembly ("memory-safe") {
            // the config was checked clean by _channelId, so its calldata words are its ABI encoding
            if iszero(st) {
                let m := mload(0x40)
                calldatacopy(m, config, 0xe0)
                log2(m, 0xe0, createdTopic, channelId)
            }
            mstore(0x00, amount)
            mstore(0x20, newBalance)
            log3(0x00, 0x40, depositedTopic, channelId, caller())
        }
    }

    /// @dev deposit's argument checks, in the order of the canonical contract's errors.
    function _checkDeposit(ChannelConfig calldata config, uint128 amount, address collector) private pure {
        uint256 zeroField;
        uint256 delay;
        assembly ("memory-safe") {
            zeroField := or(
                or(iszero(calldataload(config)), iszero(calldataload(add(config, 0x40)))),
                or(iszero(calldataload(add(config, 0x60))), iszero(calldataload(add(config, 0x80))))
            )
            delay := calldataload(add(config, 0xa0))
        }
        if (zeroField != 0) revert InvalidChannel();
        if (delay < MIN_WITHDRAW_DELAY || delay > MAX_WITHDRAW_DELAY) revert WithdrawDelayOutOfRange();
        if (amount == 0) revert ZeroDeposit();
        if (collector == address(0)) revert InvalidCollector();
    }

    /// @dev `collector.collect(payer, token, amount, channelId, collectorData)` between two `balanceOf(this)`
    ///      reads that must differ by exactly `amount`. A revert in the collector (e.g. the token's
    ///      InvalidSignature) is passed through; a collector without code collects nothing and fails the check.
    function _collect(
        ChannelConfig calldata config,
        uint256 amount,
        address collector,
        bytes32 channelId,
        bytes calldata collectorData
    ) private {
        bytes4 failed = DepositCollectionFailed.selector;
        bytes4 collectSelector = IDepositCollector.collect.selector;
        assembly ("memory-safe") {
            let token := calldataload(add(config, 0x80))
            mstore(0x00, 0x70a08231) // balanceOf(address)
            mstore(0x20, address())
            // staticcall runs before returndatasize is read (Yul evaluates arguments right to left)
            if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                mstore(0x00, failed)
                revert(0x00, 0x04)
            }
            let before := mload(0x00)

            let m := mload(0x40)
            let n := collectorData.length
            mstore(m, collectSelector)
            mstore(add(m, 0x04), calldataload(config)) // payer
            mstore(add(m, 0x24), token)
            mstore(add(m, 0x44), amount)
            mstore(add(m, 0x64), channelId)
            mstore(add(m, 0x84), 0xa0)
            mstore(add(m, 0xa4), n)
            // right-pad the bytes with zeros, as the ABI encodes them
            let padded := and(add(n, 0x1f), not(0x1f))
            mstore(add(m, add(0xa4, padded)), 0)
            calldatacopy(add(m, 0xc4), collectorData.offset, n)
            if iszero(call(gas(), collector, 0, m, add(0xc4, padded), 0x00, 0x00)) {
                returndatacopy(m, 0x00, returndatasize())
                revert(m, returndatasize())
            }

            mstore(0x00, 0x70a08231)
            mstore(0x20, address())
            if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                mstore(0x00, failed)
                revert(0x00, 0x04)
            }
            // modular difference: exact even for a token whose balance would wrap
            if iszero(eq(sub(mload(0x00), before), amount)) {
                mstore(0x00, failed)
                revert(0x00, 0x04)
            }
        }
    }

    // ---------------------------------------------------------------- claims

    /// @notice Applies voucher claims; the caller must be each row's receiver or receiverAuthorizer.
    /// @dev No reentrancy guard on the claim paths: they make only static calls (ecrecover, ERC-1271), and every
    ///      function that calls out (deposit's collector, token transfers) writes its state first, so a claim
    ///      reentering from such a call sees and leaves consistent state.
    function claim(VoucherClaim[] calldata voucherClaims) external {
        _applyClaims(voucherClaims, false);
    }

    /// @notice Applies voucher claims authorized by the rows' common receiverAuthorizer over
    ///         `getClaimBatchDigest(voucherClaims)`; anyone may relay it.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature) external {
        (bytes32 digest, address authorizer) = _applyClaims(voucherClaims, true);
        if (!_isValidSignature(authorizer, digest, authorizerSignature)) revert InvalidSignature();
    }

    /// @notice Transfers the claimed, not yet settled amount of `token` to `receiver`; permissionless.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage rs = receivers[receiver][token];
        (uint128 claimed, uint128 settled) = (rs.totalClaimed, rs.totalSettled);
        uint128 amount = claimed - settled;
        if (amount == 0) return;
        rs.totalSettled = claimed;
        IERC20(token).safeTransfer(receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- withdrawal

    /// @notice Starts the payer's timed withdrawal of up to `amount` of the unclaimed escrow.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert InvalidChannel();
        if (amount == 0) revert NothingToWithdraw();
        bytes32 channelId = _channelId(config, _domainSeparator());
        WithdrawalState storage ws = pendingWithdrawals[channelId];
        if (ws.initiatedAt != 0) revert WithdrawalAlreadyPending();
        ChannelState storage ch = channels[channelId];
        if (amount > ch.balance - ch.totalClaimed) revert WithdrawAmountExceedsAvailable();
        uint40 now_ = uint40(block.timestamp);
        pendingWithdrawals[channelId] = WithdrawalState(amount, now_);
        emit WithdrawInitiated(channelId, amount, now_ + config.withdrawDelay);
    }

    /// @notice Completes a timed withdrawal once `withdrawDelay` has passed; capped by the unclaimed escrow.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) {
            revert NotAuthorizedToFinalizeWithdraw();
        }
        bytes32 channelId = _channelId(config, _domainSeparator());
        WithdrawalState memory ws = pendingWithdrawals[channelId];
        if (ws.initiatedAt == 0) revert WithdrawalNotPending();
        if (block.timestamp < uint256(ws.initiatedAt) + uint256(config.withdrawDelay)) {
            revert WithdrawDelayNotElapsed();
        }
        ChannelState memory ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        uint128 amount = ws.amount > available ? available : ws.amount;
        delete pendingWithdrawals[channelId];
        ch.balance -= amount;
        channels[channelId] = ch;
        emit WithdrawFinalized(channelId, msg.sender, amount);
        if (ch.balance == 0 && ch.totalClaimed == 0) emit ChannelClosed(channelId, config);
        if (amount > 0) IERC20(config.token).safeTransfer(config.payer, amount);
    }

    // ---------------------------------------------------------------- refunds

    /// @notice Cooperative refund of up to `amount` of the unclaimed escrow; caller: receiver or receiverAuthorizer.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiverAuthorizer && msg.sender != config.receiver) revert NotAuthorizedToRefund();
        bytes32 channelId = _channelId(config, _domainSeparator());
        _executeRefund(config, channelId, amount);
    }

    /// @notice Refund authorized by the receiverAuthorizer's EIP-712 `Refund` signature at the current nonce.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 ds = _domainSeparator();
        bytes32 channelId = _channelId(config, ds);
        if (nonce != refundNonce[channelId]) revert InvalidRefundNonce();
        bytes32 digest = _typedHash(ds, keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
        if (!_isValidSignature(config.receiverAuthorizer, digest, receiverAuthorizerSignature)) {
            revert InvalidSignature();
        }
        _executeRefund(config, channelId, amount);
    }

    // ---------------------------------------------------------------- views

    function getChannelId(ChannelConfig calldata config) external view returns (bytes32) {
        return _channelId(config, _domainSeparator());
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32) {
        return _typedHash(_domainSeparator(), keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32) {
        return _typedHash(_domainSeparator(), keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    /// @notice EIP-712 digest of `ClaimBatch(ClaimEntry[] claims)` over the rows; defined for zero rows too.
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32) {
        bytes32 ds = _domainSeparator();
        uint256 n = voucherClaims.length;
        uint256 p = _allocateWords(n);
        for (uint256 i; i < n; ++i) {
            VoucherClaim calldata vc = voucherClaims[i];
            bytes32 entry = _entryHash(
                _channelId(vc.voucher.channel, ds), vc.voucher.maxClaimableAmount, vc.totalClaimed
            );
            assembly ("memory-safe") {
                mstore(add(p, shl(5, i)), entry)
            }
        }
        return _batchDigest(ds, p, n);
    }

    /// @notice EIP-5267 description of the EIP-712 domain.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", "x402 Batch Settlement", "1", block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    // ---------------------------------------------------------------- internals

    uint256 private constant _ROW_ERC1271 = 1;
    uint256 private constant _ROW_BAD_SIGNATURE = 2;
    uint256 private constant _ROW_ABOVE_CEILING = 3;
    uint256 private constant _ROW_ABOVE_BALANCE = 4;
    uint256 private constant _ROW_WRONG_AUTHORIZER = 5;
    uint256 private constant _ROW_UNAUTHORIZED_CALLER = 6;
    uint256 private constant _ROW_MALFORMED = 7;
    uint256 private constant _ROW_OVERFLOW = 8;

    // The type hashes again as number literals, the only constants inline assembly accepts
    // (tests check them against the public keccak256 constants above).
    uint256 private constant _CONFIG_TH = 0x1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308;
    uint256 private constant _ENTRY_TH = 0x30b9a0367528fca13c3e8ec6134c3113f1887ebe7a1ad61de0955aac288b0cf5;
    uint256 private constant _VOUCHER_TH = 0x1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69;

    /// @dev Applies all rows and returns the batch digest (claimWithSignature) and rows[0]'s receiverAuthorizer.
    ///      The rows are processed by `_claimLoop` in assembly; it stops only for what Solidity must do:
    ///      an ERC-1271 payer signature (checked here, then the loop resumes at that row) or an error.
    function _applyClaims(VoucherClaim[] calldata rows, bool signed) private returns (bytes32, address) {
        uint256 n = rows.length;
        if (n == 0) revert EmptyBatch();
        address authorizer = rows[0].voucher.channel.receiverAuthorizer;
        // ctx words: ds, entry-hash array (0 for claim), required authorizer (0: caller check), verified row,
        // rows base offset, n, run receiver, run token, run amount
        uint256 ctx = _allocateWords(9);
        uint256 p = signed ? _allocateWords(n) : 0;
        bytes32 ds = _domainSeparator();
        assembly ("memory-safe") {
            mstore(ctx, ds)
            mstore(add(ctx, 0x20), p)
            mstore(add(ctx, 0x40), mul(authorizer, signed))
            mstore(add(ctx, 0x60), not(0))
            mstore(add(ctx, 0x80), rows.offset)
            mstore(add(ctx, 0xa0), n)
            mstore(add(ctx, 0xc0), 0)
            mstore(add(ctx, 0xe0), 0)
            mstore(add(ctx, 0x100), 0)
        }
        uint256 i;
        while (true) {
            (uint256 at, uint256 code, bytes32 digest) = _claimLoop(ctx, i);
            if (code == 0) break;
            if (code != _ROW_ERC1271) _revertRow(code);
            VoucherClaim calldata vc = rows[at];
            if (!_isValidSignature(vc.voucher.channel.payer, digest, vc.signature)) revert InvalidSignature();
            i = at;
            assembly ("memory-safe") {
                mstore(add(ctx, 0x60), at)
            }
        }
        return (signed ? _batchDigest(ds, p, n) : bytes32(0), authorizer);
    }

    /// @dev Rows [i, n): validate, hash (channel id, entry hash into p[i] when p != 0), and when the row raises
    ///      totalClaimed: check ceiling, balance and the payer's ECDSA signature (skipped for the verified row),
    ///      write the packed slot, emit Claimed, and add the delta to the (receiver, token) run, crediting
    ///      `receivers` when the run changes and at the end. Returns the row it stopped at and why.
    function _claimLoop(uint256 ctx, uint256 i) private returns (uint256, uint256 code, bytes32 digest) {
        assembly ("memory-safe") {
            // receivers[r][t].totalClaimed += the run's amount; returns 1 on uint128 overflow
            function flush(c) -> overflow {
                let amount := mload(add(c, 0x100))
                if amount {
                    mstore(0x00, mload(add(c, 0xc0)))
                    mstore(0x20, 3) // receivers.slot
                    mstore(0x20, keccak256(0x00, 0x40))
                    mstore(0x00, mload(add(c, 0xe0)))
                    let s := keccak256(0x00, 0x40)
                    let v := sload(s)
                    let t := add(and(v, _LOW128), amount)
                    overflow := gt(t, _LOW128)
                    sstore(s, or(and(v, not(_LOW128)), and(t, _LOW128)))
                }
            }
            function typed(m, ds, h) -> d {
                mstore(m, hex"1901")
                mstore(add(m, 0x02), ds)
                mstore(add(m, 0x22), h)
                d := keccak256(m, 0x42)
            }
            // the EIP-712 hash of the ChannelConfig at calldata e under domain ds
            function channelId(m, e, ds) -> cid {
                mstore(m, _CONFIG_TH)
                calldatacopy(add(m, 0x20), e, 0xe0)
                cid := typed(m, ds, keccak256(m, 0x100))
            }
            // ecrecover of the 65-byte signature whose length word is at calldata so; 0 if malformed or high-s
            function recover(m, h, so) -> signer {
                if and(eq(calldataload(so), 65), iszero(gt(add(so, 0x61), calldatasize()))) {
                    let s := calldataload(add(so, 0x40))
                    if iszero(gt(s, _HALF_N)) {
                        mstore(m, h)
                        mstore(add(m, 0x20), byte(0, calldataload(add(so, 0x60))))
                        mstore(add(m, 0x40), calldataload(add(so, 0x20)))
                        mstore(add(m, 0x60), s)
                        mstore(0x00, 0)
                        pop(staticcall(gas(), 1, m, 0x80, 0x00, 0x20))
                        signer := mload(0x00)
                    }
                }
            }
            // the wrong sender (claim) or receiverAuthorizer (claimWithSignature); 0 when fine.
            // Dirty high bits need no check here: they change the channel id, and deposit (which rejects them)
            // is the only way to fund a channel, so such a row finds an empty channel and cannot claim.
            function check(c, e) -> err {
                let ra := calldataload(add(e, 0x60))
                let required := mload(add(c, 0x40))
                switch required
                case 0 {
                    if iszero(or(eq(caller(), ra), eq(caller(), calldataload(add(e, 0x40))))) {
                        err := _ROW_UNAUTHORIZED_CALLER
                    }
                }
                default { if iszero(eq(ra, required)) { err := _ROW_WRONG_AUTHORIZER } }
            }
            for {} lt(i, mload(add(ctx, 0xa0))) { i := add(i, 1) } {
                let e := mload(add(ctx, 0x80))
                {
                    let off := calldataload(add(e, shl(5, i)))
                    // static part: config (7 words), ceiling, signature offset, totalClaimed
                    if gt(add(off, 0x140), calldatasize()) { code := _ROW_MALFORMED break }
                    e := add(e, off)
                }
                if gt(add(e, 0x140), calldatasize()) { code := _ROW_MALFORMED break }
                code := check(ctx, e)
                if code { break }
                let m := mload(0x40)
                let cid := channelId(m, e, mload(ctx))
                let total := calldataload(add(e, 0x120))
                {
                    let p := mload(add(ctx, 0x20))
                    if p {
                        mstore(m, _ENTRY_TH)
                        mstore(add(m, 0x20), cid)
                        mstore(add(m, 0x40), calldataload(add(e, 0xe0)))
                        mstore(add(m, 0x60), total)
                        mstore(add(p, shl(5, i)), keccak256(m, 0x80))
                    }
                }
                mstore(0x00, cid)
                mstore(0x20, 0) // channels.slot
                let slot := keccak256(0x00, 0x40)
                let st := sload(slot)
                // replaying an applied voucher is a no-op
                if gt(total, shr(128, st)) {
                    if gt(total, calldataload(add(e, 0xe0))) { code := _ROW_ABOVE_CEILING break }
                    if gt(total, and(st, _LOW128)) { code := _ROW_ABOVE_BALANCE break }
                    if iszero(eq(i, mload(add(ctx, 0x60)))) {
                        mstore(m, _VOUCHER_TH)
                        mstore(add(m, 0x20), cid)
                        mstore(add(m, 0x40), calldataload(add(e, 0xe0)))
                        digest := typed(m, mload(ctx), keccak256(m, 0x60))
                        // the voucher signer: payerAuthorizer when set, else the payer
                        let signer := calldataload(add(e, 0x20))
                        let recovered := recover(m, digest, add(e, calldataload(add(e, 0x100))))
                        if iszero(signer) {
                            if iszero(eq(recovered, calldataload(e))) {
                                // a payer without payerAuthorizer may be a contract wallet: ERC-1271 in Solidity
                                code := _ROW_ERC1271
                                break
                            }
                            signer := recovered
                        }
                        if iszero(eq(recovered, signer)) { code := _ROW_BAD_SIGNATURE break }
                    }
                    sstore(slot, or(and(st, _LOW128), shl(128, total)))
                    let delta := sub(total, shr(128, st))
                    mstore(0x00, delta)
                    mstore(0x20, total)
                    log3(0x00, 0x40, _CLAIMED_TOPIC, cid, caller())
                    let r := calldataload(add(e, 0x40))
                    let t := calldataload(add(e, 0x80))
                    switch and(eq(r, mload(add(ctx, 0xc0))), eq(t, mload(add(ctx, 0xe0))))
                    case 1 { mstore(add(ctx, 0x100), add(mload(add(ctx, 0x100)), delta)) }
                    default {
                        if flush(ctx) { code := _ROW_OVERFLOW break }
                        mstore(add(ctx, 0xc0), r)
                        mstore(add(ctx, 0xe0), t)
                        mstore(add(ctx, 0x100), delta)
                    }
                }
            }
            if iszero(code) {
                if flush(ctx) { code := _ROW_OVERFLOW }
            }
        }
        return (i, code, digest);
    }

    function _revertRow(uint256 code) private pure {
        if (code == _ROW_BAD_SIGNATURE) revert InvalidSignature();
        if (code == _ROW_ABOVE_CEILING) revert ClaimExceedsCeiling();
        if (code == _ROW_ABOVE_BALANCE) revert ClaimExceedsBalance();
        if (code == _ROW_WRONG_AUTHORIZER) revert NotReceiverAuthorizer();
        if (code == _ROW_UNAUTHORIZED_CALLER) revert NotAuthorizedToClaim();
        if (code == _ROW_OVERFLOW) revert DepositOverflow();
        revert InvalidChannel();
    }

    function _executeRefund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert ZeroRefund();
        unchecked {
            refundNonce[channelId]++;
        }
        ChannelState memory ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        uint128 refunded = amount > available ? available : amount;
        if (refunded == 0) return;
        ch.balance -= refunded;
        channels[channelId] = ch;
        WithdrawalState storage ws = pendingWithdrawals[channelId];
        if (ws.initiatedAt != 0) {
            if (refunded >= ws.amount) delete pendingWithdrawals[channelId];
            else ws.amount -= refunded;
        }
        emit Refunded(channelId, msg.sender, refunded);
        if (ch.balance == 0 && ch.totalClaimed == 0) emit ChannelClosed(channelId, config);
        IERC20(config.token).safeTransfer(config.payer, refunded);
    }

    /// @dev ECDSA for EOAs (65-byte, low-s), then ERC-1271 for contracts, as OpenZeppelin's SignatureChecker.
    function _isValidSignature(address signer, bytes32 digest, bytes calldata signature) private view returns (bool) {
        if (signer == address(0)) return false;
        if (_recover(digest, signature) == signer) return true;
        if (signer.code.length == 0) return false;
        return SignatureChecker.isValidERC1271SignatureNow(signer, digest, signature);
    }

    /// @dev ecrecover of a 65-byte (r, s, v) calldata signature; zero when malformed, v not 27/28, or s high.
    function _recover(bytes32 digest, bytes calldata signature) private view returns (address signer) {
        assembly ("memory-safe") {
            if eq(signature.length, 65) {
                let s := calldataload(add(signature.offset, 0x20))
                if iszero(gt(s, _HALF_N)) {
                    let m := mload(0x40)
                    mstore(m, digest)
                    mstore(add(m, 0x20), byte(0, calldataload(add(signature.offset, 0x40))))
                    mstore(add(m, 0x40), calldataload(signature.offset))
                    mstore(add(m, 0x60), s)
                    mstore(0x00, 0)
                    pop(staticcall(gas(), 1, m, 0x80, 0x00, 0x20))
                    signer := mload(0x00)
                }
            }
        }
    }

    /// @dev EIP-712 hashStruct(ChannelConfig) under this domain, hashed straight from calldata. Rejects dirty
    ///      high bits so one config has exactly one id.
    function _channelId(ChannelConfig calldata c, bytes32 ds) private pure returns (bytes32 id) {
        bytes32 typehash = CHANNEL_CONFIG_TYPEHASH;
        assembly ("memory-safe") {
            let dirty := or(shr(160, calldataload(c)), shr(160, calldataload(add(c, 0x20))))
            dirty := or(dirty, or(shr(160, calldataload(add(c, 0x40))), shr(160, calldataload(add(c, 0x60)))))
            dirty := or(dirty, or(shr(160, calldataload(add(c, 0x80))), shr(40, calldataload(add(c, 0xa0)))))
            if dirty { revert(0, 0) }
            let m := mload(0x40)
            mstore(m, typehash)
            calldatacopy(add(m, 0x20), c, 0xe0)
            let structHash := keccak256(m, 0x100)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), ds)
            mstore(add(m, 0x22), structHash)
            id := keccak256(m, 0x42)
        }
    }

    function _entryHash(bytes32 channelId, uint128 ceiling, uint128 total) private pure returns (bytes32 h) {
        bytes32 typehash = CLAIM_ENTRY_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), ceiling)
            mstore(add(m, 0x60), total)
            h := keccak256(m, 0x80)
        }
    }

    function _batchDigest(bytes32 ds, uint256 p, uint256 n) private pure returns (bytes32) {
        bytes32 root;
        assembly ("memory-safe") {
            root := keccak256(p, shl(5, n))
        }
        bytes32 structHash;
        bytes32 typehash = CLAIM_BATCH_TYPEHASH;
        assembly ("memory-safe") {
            mstore(0x00, typehash)
            mstore(0x20, root)
            structHash := keccak256(0x00, 0x40)
        }
        return _typedHash(ds, structHash);
    }

    function _typedHash(bytes32 ds, bytes32 structHash) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), ds)
            mstore(add(m, 0x22), structHash)
            h := keccak256(m, 0x42)
        }
    }

    function _domainSeparator() private view returns (bytes32 ds) {
        (bytes32 typehash, bytes32 nameHash, bytes32 versionHash) = (_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH);
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), nameHash)
            mstore(add(m, 0x40), versionHash)
            mstore(add(m, 0x60), chainid())
            mstore(add(m, 0x80), address())
            ds := keccak256(m, 0xa0)
        }
    }

    /// @dev The storage slot of `channels[channelId]` and its packed value (balance low, totalClaimed high).
    function _channelSlot(bytes32 channelId) private view returns (uint256 slot, uint256 value) {
        assembly ("memory-safe") {
            mstore(0x00, channelId)
            mstore(0x20, channels.slot)
            slot := keccak256(0x00, 0x40)
            value := sload(slot)
        }
    }

    function _allocateWords(uint256 n) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := mload(0x40)
            mstore(0x40, add(p, shl(5, n)))
        }
    }
}
