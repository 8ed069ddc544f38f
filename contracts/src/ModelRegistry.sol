// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ModelRegistry
/// @notice The provider publishes each model version's weights hash and where to fetch the weights.
/// @dev Publications are append-only: a (model, version) pair and a weights hash are published once.
///      Storage slot 0 holds `owner` (written explicitly when the code is placed at a fixed address).
contract ModelRegistry {
    struct Entry {
        string model;
        string version;
        string uri;
        uint64 publishedAt;
    }

    address public owner;
    mapping(bytes32 weightsHash => Entry) private _entries;
    mapping(bytes32 modelVersionKey => bytes32 weightsHash) private _hashOf;
    bytes32[] private _hashes;

    event ModelPublished(
        bytes32 indexed weightsHash, bytes32 indexed modelKey, string model, string version, string uri
    );
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    error NotOwner();
    error ZeroWeightsHash();
    error EmptyModelOrVersion();
    error AlreadyPublished(bytes32 weightsHash);
    error UnknownModel();

    constructor(address initialOwner) {
        owner = initialOwner;
        emit OwnershipTransferred(address(0), initialOwner);
    }

    /// @notice Publishes `weightsHash` as `version` of `model`, e.g. publish("efficientnet-lite0", "v3", h, "file://...").
    function publish(string calldata model, string calldata version, bytes32 weightsHash, string calldata uri)
        external
    {
        if (msg.sender != owner) revert NotOwner();
        if (weightsHash == bytes32(0)) revert ZeroWeightsHash();
        if (bytes(model).length == 0 || bytes(version).length == 0) revert EmptyModelOrVersion();
        bytes32 key = keccak256(abi.encode(model, version));
        if (_entries[weightsHash].publishedAt != 0) revert AlreadyPublished(weightsHash);
        if (_hashOf[key] != bytes32(0)) revert AlreadyPublished(_hashOf[key]);
        _entries[weightsHash] = Entry(model, version, uri, uint64(block.timestamp));
        _hashOf[key] = weightsHash;
        _hashes.push(weightsHash);
        emit ModelPublished(weightsHash, keccak256(bytes(model)), model, version, uri);
    }

    /// @notice The publication of a weights hash; reverts `UnknownModel` if it was never published.
    function get(bytes32 weightsHash)
        external
        view
        returns (string memory model, string memory version, string memory uri, uint64 publishedAt)
    {
        Entry storage e = _entries[weightsHash];
        if (e.publishedAt == 0) revert UnknownModel();
        return (e.model, e.version, e.uri, e.publishedAt);
    }

    /// @notice The weights hash published as `version` of `model` (zero if none).
    function hashOf(string calldata model, string calldata version) external view returns (bytes32) {
        return _hashOf[keccak256(abi.encode(model, version))];
    }

    function isPublished(bytes32 weightsHash) external view returns (bool) {
        return _entries[weightsHash].publishedAt != 0;
    }

    function count() external view returns (uint256) {
        return _hashes.length;
    }

    /// @notice The i-th published weights hash, in publication order.
    function hashAt(uint256 i) external view returns (bytes32) {
        return _hashes[i];
    }

    function transferOwnership(address newOwner) external {
        if (msg.sender != owner) revert NotOwner();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}
