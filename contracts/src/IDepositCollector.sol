// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice A deposit collector pulls `amount` of `token` from `payer` into the settlement contract.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}
