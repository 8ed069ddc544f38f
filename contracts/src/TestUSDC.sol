// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title TestUSDC
/// @notice A dev-chain stablecoin: ERC-20 with 6 decimals, EIP-2612 permit, EIP-3009 transfer/receive with
///         authorization (v,r,s and bytes-signature forms, like USDC v2.2), and an open `mint` for test chains.
/// @dev No constructor state and no immutables: the EIP-712 domain is computed from `address(this)` and
///      `block.chainid` at run time, so the code can be placed at any address. Storage layout (slots):
///      0 balanceOf, 1 allowance, 2 totalSupply, 3 nonces, 4 authorizationState.
contract TestUSDC {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    uint256 public totalSupply;
    mapping(address => uint256) public nonces;
    mapping(address => mapping(bytes32 => bool)) public authorizationState;

    string public constant name = "Test USDC";
    string public constant symbol = "USDC";
    string public constant version = "2";
    uint8 public constant decimals = 6;

    bytes32 public constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    error InsufficientBalance(address from, uint256 balance, uint256 needed);
    error InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
    error InvalidRecipient();
    error InvalidSignature();
    error PermitExpired();
    error AuthorizationNotYetValid();
    error AuthorizationExpired();
    error AuthorizationUsedOrCanceled();
    error CallerMustBePayee();

    bytes32 private constant _NAME_HASH = keccak256("Test USDC");
    bytes32 private constant _VERSION_HASH = keccak256("2");

    function DOMAIN_SEPARATOR() public view returns (bytes32 ds) {
        (bytes32 typehash, bytes32 nameHash, bytes32 versionHash) = (_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH);
        // hashed in scratch memory past the free pointer, without allocating: it runs in every authorization
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

    /// @notice EIP-5267 domain, so wallets and SDKs can read name and version.
    function eip712Domain()
        external
        view
        returns (bytes1, string memory, string memory, uint256, address, bytes32, uint256[] memory)
    {
        return (hex"0f", name, version, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    /// @notice Dev chains only: anyone may mint, e.g. mint(alice, 1_000e6).
    function mint(address to, uint256 amount) external {
        if (to == address(0)) revert InvalidRecipient();
        totalSupply += amount;
        unchecked {
            balanceOf[to] += amount;
        }
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(msg.sender, allowed, value);
            unchecked {
                allowance[from][msg.sender] = allowed - value;
            }
        }
        _transfer(from, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    /// @notice EIP-2612 permit.
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
    {
        if (block.timestamp > deadline) revert PermitExpired();
        bytes32 digest = _typed(keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonces[owner]++, deadline)));
        _checkSignature(owner, digest, v, r, s);
        allowance[owner][spender] = value;
        emit Approval(owner, spender, value);
    }

    /// @notice EIP-3009 (USDC v2.2 bytes form: ECDSA, or ERC-1271 for contract wallets).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        (bytes32 digest, uint256 slot) =
            _authorizationDigest(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce);
        _checkSignature(from, digest, signature);
        _useAuthorization(from, nonce, slot);
        _transfer(from, to, value);
    }

    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        (bytes32 digest, uint256 slot) =
            _authorizationDigest(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce);
        _checkSignature(from, digest, v, r, s);
        _useAuthorization(from, nonce, slot);
        _transfer(from, to, value);
    }

    /// @notice Like transferWithAuthorization, but only the payee may submit it (front-running safe for contracts).
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        if (to != msg.sender) revert CallerMustBePayee();
        (bytes32 digest, uint256 slot) =
            _authorizationDigest(RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce);
        _checkSignature(from, digest, signature);
        _useAuthorization(from, nonce, slot);
        _transfer(from, to, value);
    }

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (to != msg.sender) revert CallerMustBePayee();
        (bytes32 digest, uint256 slot) =
            _authorizationDigest(RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce);
        _checkSignature(from, digest, v, r, s);
        _useAuthorization(from, nonce, slot);
        _transfer(from, to, value);
    }

    function cancelAuthorization(address authorizer, bytes32 nonce, bytes calldata signature) external {
        bytes32 digest = _cancelDigest(authorizer, nonce);
        _checkSignature(authorizer, digest, signature);
        _cancelAuthorization(authorizer, nonce);
    }

    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        bytes32 digest = _cancelDigest(authorizer, nonce);
        _checkSignature(authorizer, digest, v, r, s);
        _cancelAuthorization(authorizer, nonce);
    }

    function _cancelDigest(address authorizer, bytes32 nonce) private view returns (bytes32) {
        if (authorizationState[authorizer][nonce]) revert AuthorizationUsedOrCanceled();
        return _typed(keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)));
    }

    function _cancelAuthorization(address authorizer, bytes32 nonce) private {
        authorizationState[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    /// @dev Checks the validity window and the nonce, then returns the EIP-712 digest of the authorization
    ///      (hashed past the free pointer without allocating: this runs in every ERC-3009 deposit) and the
    ///      nonce's authorizationState slot.
    function _authorizationDigest(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) private view returns (bytes32 digest, uint256 slot) {
        if (block.timestamp <= validAfter) revert AuthorizationNotYetValid();
        if (block.timestamp >= validBefore) revert AuthorizationExpired();
        bool used;
        assembly ("memory-safe") {
            mstore(0x00, from)
            mstore(0x20, authorizationState.slot)
            mstore(0x20, keccak256(0x00, 0x40))
            mstore(0x00, nonce)
            slot := keccak256(0x00, 0x40)
            used := sload(slot)
        }
        if (used) revert AuthorizationUsedOrCanceled();
        bytes32 ds = DOMAIN_SEPARATOR();
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), from)
            mstore(add(m, 0x40), to)
            mstore(add(m, 0x60), value)
            mstore(add(m, 0x80), validAfter)
            mstore(add(m, 0xa0), validBefore)
            mstore(add(m, 0xc0), nonce)
            let structHash := keccak256(m, 0xe0)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), ds)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
        }
    }

    /// @dev Marks `nonce` of `from` used; `slot` is authorizationState[from][nonce] from _authorizationDigest.
    function _useAuthorization(address from, bytes32 nonce, uint256 slot) private {
        assembly ("memory-safe") {
            sstore(slot, 1)
        }
        emit AuthorizationUsed(from, nonce);
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) revert InvalidRecipient();
        uint256 bal;
        assembly ("memory-safe") {
            mstore(0x00, from)
            mstore(0x20, balanceOf.slot)
            let fromSlot := keccak256(0x00, 0x40)
            bal := sload(fromSlot)
            if iszero(lt(bal, value)) {
                sstore(fromSlot, sub(bal, value))
                mstore(0x00, to)
                let toSlot := keccak256(0x00, 0x40)
                // cannot overflow: every balance is part of totalSupply, which mint checks
                sstore(toSlot, add(sload(toSlot), value))
            }
        }
        if (bal < value) revert InsufficientBalance(from, bal, value);
        emit Transfer(from, to, value);
    }

    /// @dev Reverts InvalidSignature unless `signature` is `signer`'s: ECDSA (65 bytes r,s,v, low s) first, with no
    ///      account access for the common EOA signer, then ERC-1271 for contract wallets.
    function _checkSignature(address signer, bytes32 digest, bytes calldata signature) private view {
        if (signature.length == 65) {
            bytes32 r;
            bytes32 s;
            uint8 v;
            assembly ("memory-safe") {
                r := calldataload(signature.offset)
                s := calldataload(add(signature.offset, 0x20))
                v := byte(0, calldataload(add(signature.offset, 0x40)))
            }
            if (_isSigner(signer, _recover(digest, v, r, s))) return;
        }
        if (!_isValidERC1271(signer, digest, signature)) revert InvalidSignature();
    }

    function _checkSignature(address signer, bytes32 digest, uint8 v, bytes32 r, bytes32 s) private view {
        if (_isSigner(signer, _recover(digest, v, r, s))) return;
        if (!_isValidERC1271(signer, digest, abi.encodePacked(r, s, v))) revert InvalidSignature();
    }

    /// @dev `recovered` is zero for any invalid signature, so it must never match a zero `signer`.
    function _isSigner(address signer, address recovered) private pure returns (bool) {
        return recovered == signer && recovered != address(0);
    }

    function _isValidERC1271(address signer, bytes32 digest, bytes memory signature) private view returns (bool) {
        return signer.code.length != 0 && SignatureChecker.isValidERC1271SignatureNow(signer, digest, signature);
    }

    /// @dev ecrecover with OpenZeppelin ECDSA's malleability rule (s in the lower half order); zero when invalid
    ///      (high s, v not 27/28, or no solution), so it never equals a real signer.
    function _recover(bytes32 digest, uint8 v, bytes32 r, bytes32 s) private view returns (address signer) {
        assembly ("memory-safe") {
            if iszero(gt(s, 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0)) {
                let m := mload(0x40)
                mstore(m, digest)
                mstore(add(m, 0x20), v)
                mstore(add(m, 0x40), r)
                mstore(add(m, 0x60), s)
                mstore(0x00, 0)
                pop(staticcall(gas(), 1, m, 0x80, 0x00, 0x20))
                signer := mload(0x00)
            }
        }
    }

    function _typed(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR(), structHash));
    }
}
