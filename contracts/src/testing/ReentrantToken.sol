// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ReentrantToken (tests only)
/// @notice A hostile ERC-20: once armed, its next `transfer` calls `target` with `payload` (a reentrant call
///         into the settlement) and records whether that call succeeded. `receiveWithAuthorization` skips the
///         signature so deposits through the ERC-3009 collector work in tests.
contract ReentrantToken {
    mapping(address => uint256) public balanceOf;
    address public target;
    bytes public payload;
    bool public reentryAttempted;
    bool public reentrySucceeded;
    bytes public reentryResult;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        _reenter();
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        _move(from, to, value);
        _reenter();
        return true;
    }

    function receiveWithAuthorization(address from, address to, uint256 value, uint256, uint256, bytes32, bytes memory)
        external
    {
        require(to == msg.sender, "caller must be payee");
        _move(from, to, value);
    }

    function _move(address from, address to, uint256 value) private {
        require(balanceOf[from] >= value, "balance");
        balanceOf[from] -= value;
        balanceOf[to] += value;
    }

    function _reenter() private {
        address t = target;
        if (t == address(0)) return;
        target = address(0);
        reentryAttempted = true;
        (bool ok, bytes memory ret) = t.call(payload);
        reentrySucceeded = ok;
        reentryResult = ret;
    }
}
