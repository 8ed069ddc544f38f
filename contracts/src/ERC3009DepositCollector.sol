// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IDepositCollector} from "./IDepositCollector.sol";

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// @title ERC3009DepositCollector
/// @notice Pulls a deposit with ERC-3009 `receiveWithAuthorization` and forwards it to the settlement contract.
/// @dev ERC-3009 requires `msg.sender == to`, so the tokens land here first. The authorization nonce binds the
///      deposit to one channel: `keccak256(abi.encode(channelId, salt))`; `collectorData` is
///      `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)` (x402 reference client).
///      The settlement address is an immutable; for placement at a fixed address the Python loader patches it in.
contract ERC3009DepositCollector is IDepositCollector {
    using SafeERC20 for IERC20;

    /// @notice The only caller allowed, and the recipient of every collected deposit.
    address public immutable x402BatchSettlement;

    error OnlyX402BatchSettlement();

    constructor(address settlement) {
        x402BatchSettlement = settlement;
    }

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        // Only the settlement may trigger a pull: anyone else could replay an observed authorization to itself.
        if (msg.sender != x402BatchSettlement) revert OnlyX402BatchSettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}
