// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IConsentRegistry} from "./IConsentRegistry.sol";
import {IConsortiumRegistry} from "./IConsortiumRegistry.sol";

/// @title Patient consent grants, relayed EIP-712 signatures, and break-glass records
contract ConsentRegistry is IConsentRegistry {
    uint8 private constant PURPOSE_COUNT = 3;
    // secp256k1n / 2: EIP-2 malleability bound.
    uint256 private constant HALF_CURVE_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant GRANT_TYPEHASH = keccak256(
        "Grant(address patient,address grantee,uint8 purpose,bytes32 studyHash,uint64 validFrom,uint64 expiresAt,uint256 nonce,uint256 deadline)"
    );
    bytes32 private constant REVOKE_TYPEHASH = keccak256(
        "Revoke(address patient,address grantee,uint8 purpose,bytes32 studyHash,uint256 nonce,uint256 deadline)"
    );

    /// @notice The consortium whose active members relay and receive grants.
    IConsortiumRegistry public immutable registry;

    mapping(bytes32 => Grant) private _grants;
    mapping(address => uint256) private _nonces;

    modifier onlyActiveMember() {
        if (!registry.isActiveMember(msg.sender)) revert ConsentRegistryNotMember(msg.sender);
        _;
    }

    /// @param registry_ The consortium registry.
    constructor(IConsortiumRegistry registry_) {
        registry = registry_;
    }

    /// @inheritdoc IConsentRegistry
    function grant(address grantee, uint8 purpose, bytes32 studyHash, uint64 validFrom, uint64 expiresAt) external {
        _nonces[msg.sender]++;
        _grant(msg.sender, grantee, purpose, studyHash, validFrom, expiresAt);
    }

    /// @inheritdoc IConsentRegistry
    function revoke(address grantee, uint8 purpose, bytes32 studyHash) external {
        _nonces[msg.sender]++;
        _revoke(msg.sender, grantee, purpose, studyHash);
    }

    /// @inheritdoc IConsentRegistry
    function grantBySig(
        address patient,
        address grantee,
        uint8 purpose,
        bytes32 studyHash,
        uint64 validFrom,
        uint64 expiresAt,
        uint256 nonce,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external onlyActiveMember {
        bytes32 structHash = keccak256(
            abi.encode(GRANT_TYPEHASH, patient, grantee, purpose, studyHash, validFrom, expiresAt, nonce, deadline)
        );
        _consumeSignature(patient, structHash, nonce, deadline, v, r, s);
        _grant(patient, grantee, purpose, studyHash, validFrom, expiresAt);
    }

    /// @inheritdoc IConsentRegistry
    function revokeBySig(
        address patient,
        address grantee,
        uint8 purpose,
        bytes32 studyHash,
        uint256 nonce,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external onlyActiveMember {
        bytes32 structHash = keccak256(
            abi.encode(REVOKE_TYPEHASH, patient, grantee, purpose, studyHash, nonce, deadline)
        );
        _consumeSignature(patient, structHash, nonce, deadline, v, r, s);
        _revoke(patient, grantee, purpose, studyHash);
    }

    /// @inheritdoc IConsentRegistry
    function recordBreakGlass(address patient, bytes32 studyHash, uint16 reasonCode) external onlyActiveMember {
        emit BreakGlass(patient, msg.sender, studyHash, reasonCode);
    }

    /// @inheritdoc IConsentRegistry
    function isPermitted(address patient, address grantee, uint8 purpose, bytes32 studyHash) external view returns (bool) {
        if (purpose >= PURPOSE_COUNT || !registry.isActiveMember(grantee)) return false;
        return _inForce(_key(patient, grantee, purpose, studyHash))
            || _inForce(_key(patient, grantee, purpose, bytes32(0)))
            || _inForce(_key(patient, address(0), purpose, studyHash))
            || _inForce(_key(patient, address(0), purpose, bytes32(0)));
    }

    /// @inheritdoc IConsentRegistry
    function getGrant(address patient, address grantee, uint8 purpose, bytes32 studyHash) external view returns (Grant memory) {
        return _grants[_key(patient, grantee, purpose, studyHash)];
    }

    /// @inheritdoc IConsentRegistry
    function nonces(address patient) external view returns (uint256) {
        return _nonces[patient];
    }

    /// @inheritdoc IConsentRegistry
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        // Computed per call so a fork with another chain id cannot reuse signatures.
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("pacsmesh ConsentRegistry"), keccak256("1"), block.chainid, address(this))
        );
    }

    function _consumeSignature(
        address patient,
        bytes32 structHash,
        uint256 nonce,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) private {
        if (block.timestamp > deadline) revert ConsentRegistryExpired(deadline, block.timestamp);
        // The nonce is also inside the signed struct; checking it first names a replay plainly.
        if (nonce != _nonces[patient]) revert ConsentRegistryInvalidNonce(_nonces[patient], nonce);
        if (uint256(s) > HALF_CURVE_ORDER) revert ConsentRegistryHighS(s);
        if (v != 27 && v != 28) revert ConsentRegistryInvalidSignature();
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
        address recovered = ecrecover(digest, v, r, s);
        if (recovered == address(0)) revert ConsentRegistryInvalidSignature();
        if (recovered != patient) revert ConsentRegistryWrongSigner(recovered, patient);
        _nonces[patient]++;
    }

    function _grant(address patient, address grantee, uint8 purpose, bytes32 studyHash, uint64 validFrom, uint64 expiresAt) private {
        if (purpose >= PURPOSE_COUNT) revert ConsentRegistryUnknownPurpose(purpose);
        if (grantee != address(0) && !registry.isActiveMember(grantee)) revert ConsentRegistryUnknownGrantee(grantee);
        if (validFrom == 0) validFrom = uint64(block.timestamp);
        if (expiresAt != 0 && (expiresAt <= validFrom || expiresAt <= block.timestamp)) {
            revert ConsentRegistryInvalidWindow(validFrom, expiresAt);
        }
        _grants[_key(patient, grantee, purpose, studyHash)] = Grant({validFrom: validFrom, expiresAt: expiresAt, active: true});
        emit GrantSet(patient, grantee, purpose, studyHash, validFrom, expiresAt, msg.sender);
    }

    function _revoke(address patient, address grantee, uint8 purpose, bytes32 studyHash) private {
        bytes32 key = _key(patient, grantee, purpose, studyHash);
        if (!_grants[key].active) revert ConsentRegistryNoGrant(patient, grantee, purpose, studyHash);
        delete _grants[key];
        emit GrantRevoked(patient, grantee, purpose, studyHash, msg.sender);
    }

    function _inForce(bytes32 key) private view returns (bool) {
        Grant storage g = _grants[key];
        return g.active && g.validFrom <= block.timestamp && (g.expiresAt == 0 || block.timestamp < g.expiresAt);
    }

    function _key(address patient, address grantee, uint8 purpose, bytes32 studyHash) private pure returns (bytes32) {
        return keccak256(abi.encode(patient, grantee, purpose, studyHash));
    }
}
