// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDepositCollector} from "./IDepositCollector.sol";

/// @title ERC3009DepositCollector
/// @notice Pulls a deposit with ERC-3009 `receiveWithAuthorization` and forwards it to the settlement contract.
/// @dev ERC-3009 requires `msg.sender == to`, so the tokens land here first. The authorization nonce binds the
///      deposit to one channel: `keccak256(abi.encode(channelId, salt))`; `collectorData` is
///      `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)` (x402 reference client).
///      The settlement address is an immutable; for placement at a fixed address the Python loader patches it in.
///      Written in assembly for gas (it runs inside every deposit): collectorData is read straight from calldata and
///      the two token calls are encoded in place, with OpenZeppelin SafeERC20's rules for the forwarding transfer.
///      Nothing here needs to be trusted beyond "only the settlement may call": the settlement checks that its own
///      token balance grew by exactly the deposit.
contract ERC3009DepositCollector is IDepositCollector {
    /// @notice The only caller allowed, and the recipient of every collected deposit.
    address public immutable x402BatchSettlement;

    error OnlyX402BatchSettlement();
    /// @dev collectorData is not `abi.encode(uint256, uint256, uint256, bytes)`.
    error InvalidCollectorData();
    /// @dev Same selector as OpenZeppelin SafeERC20's error: the forwarding transfer failed or returned false.
    error SafeERC20FailedOperation(address token);

    // receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes) (USDC v2.2 bytes form, so
    // ERC-1271 wallets can deposit too) and transfer(address,uint256)
    bytes4 private constant _RECEIVE_WITH_AUTHORIZATION = 0x88b7ab63;
    bytes4 private constant _TRANSFER = 0xa9059cbb;

    constructor(address settlement) {
        x402BatchSettlement = settlement;
    }

    /// @notice Called by the settlement inside `deposit`, e.g. collect(payer, usdc, 1e6, channelId, collectorData).
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        address settlement = x402BatchSettlement;
        // Only the settlement may trigger a pull: anyone else could replay an observed authorization to itself.
        if (msg.sender != settlement) revert OnlyX402BatchSettlement();
        bytes4 invalidData = InvalidCollectorData.selector;
        bytes4 failed = SafeERC20FailedOperation.selector;
        assembly ("memory-safe") {
            let d := collectorData.offset
            let n := collectorData.length
            // head: validAfter, validBefore, salt, signature offset; then the signature's length word and bytes.
            // Offsets are bounded before any addition so nothing can wrap.
            let sigOff := calldataload(add(d, 0x60))
            if or(lt(n, 0x80), gt(sigOff, sub(n, 0x20))) {
                mstore(0x00, invalidData)
                revert(0x00, 0x04)
            }
            let sigLen := calldataload(add(d, sigOff))
            if gt(sigLen, sub(n, add(sigOff, 0x20))) {
                mstore(0x00, invalidData)
                revert(0x00, 0x04)
            }
            // the authorization nonce: keccak256(abi.encode(channelId, salt))
            mstore(0x00, channelId)
            mstore(0x20, calldataload(add(d, 0x40)))
            let nonce := keccak256(0x00, 0x40)

            let m := mload(0x40)
            mstore(m, _RECEIVE_WITH_AUTHORIZATION)
            mstore(add(m, 0x04), payer)
            mstore(add(m, 0x24), address())
            mstore(add(m, 0x44), amount)
            calldatacopy(add(m, 0x64), d, 0x40) // validAfter, validBefore
            mstore(add(m, 0xa4), nonce)
            mstore(add(m, 0xc4), 0xe0)
            mstore(add(m, 0xe4), sigLen)
            // zero the last word first so the signature is right-padded with zeros as the ABI requires
            let padded := and(add(sigLen, 0x1f), not(0x1f))
            mstore(add(add(m, 0x104), sub(padded, 0x20)), 0)
            calldatacopy(add(m, 0x104), add(add(d, sigOff), 0x20), sigLen)
            if iszero(call(gas(), token, 0, m, add(0x104, padded), 0x00, 0x00)) {
                returndatacopy(m, 0x00, returndatasize())
                revert(m, returndatasize())
            }

            // forward to the settlement: SafeERC20.safeTransfer's rules (true, or no data from a contract)
            mstore(m, _TRANSFER)
            mstore(add(m, 0x04), settlement)
            mstore(add(m, 0x24), amount)
            if iszero(call(gas(), token, 0, m, 0x44, 0x00, 0x20)) {
                returndatacopy(m, 0x00, returndatasize())
                revert(m, returndatasize())
            }
            let ok := 0
            switch returndatasize()
            case 0 { ok := gt(extcodesize(token), 0) }
            default { ok := and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1)) }
            if iszero(ok) {
                mstore(0x00, failed)
                mstore(0x04, token)
                revert(0x00, 0x24)
            }
        }
    }
}
