// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Patient-controlled consent for cross-hospital access
/// @notice A grant is keyed by (patient, grantee, purpose, studyHash). The grantee address zero
///         means every active member; the study hash zero means all of the patient's studies.
///         Patients act from their own account or sign EIP-712 typed data that any active member
///         relays, so patients need no funds. Every patient action consumes the patient's nonce,
///         which invalidates any signature made earlier and not yet relayed.
interface IConsentRegistry {
    struct Grant {
        uint64 validFrom;
        uint64 expiresAt;
        bool active;
    }

    error ConsentRegistryNotMember(address account);
    error ConsentRegistryUnknownGrantee(address grantee);
    error ConsentRegistryUnknownPurpose(uint8 purpose);
    error ConsentRegistryInvalidWindow(uint64 validFrom, uint64 expiresAt);
    error ConsentRegistryNoGrant(address patient, address grantee, uint8 purpose, bytes32 studyHash);
    error ConsentRegistryExpired(uint256 deadline, uint256 now_);
    error ConsentRegistryInvalidNonce(uint256 expected, uint256 given);
    error ConsentRegistryHighS(bytes32 s);
    error ConsentRegistryInvalidSignature();
    error ConsentRegistryWrongSigner(address recovered, address patient);

    event GrantSet(
        address indexed patient,
        address indexed grantee,
        uint8 indexed purpose,
        bytes32 studyHash,
        uint64 validFrom,
        uint64 expiresAt,
        address relayer
    );
    event GrantRevoked(
        address indexed patient,
        address indexed grantee,
        uint8 indexed purpose,
        bytes32 studyHash,
        address relayer
    );
    event BreakGlass(
        address indexed patient,
        address indexed member,
        bytes32 indexed studyHash,
        uint16 reasonCode
    );

    /// @notice Grant (or replace) consent from the patient's own account.
    /// @param grantee A member's node account, or zero for every active member.
    /// @param purpose 0 treatment, 1 research, 2 AI training.
    /// @param studyHash keccak256 of the Study Instance UID, or zero for every study.
    /// @param validFrom First second the grant applies (0: now).
    /// @param expiresAt Second from which the grant no longer applies (0: never).
    function grant(address grantee, uint8 purpose, bytes32 studyHash, uint64 validFrom, uint64 expiresAt) external;

    /// @notice Revoke a grant from the patient's own account.
    /// @param grantee As granted.
    /// @param purpose As granted.
    /// @param studyHash As granted.
    function revoke(address grantee, uint8 purpose, bytes32 studyHash) external;

    /// @notice Relay a grant the patient signed as EIP-712 typed data; only active members relay.
    /// @param patient The signing patient.
    /// @param grantee As in grant.
    /// @param purpose As in grant.
    /// @param studyHash As in grant.
    /// @param validFrom As in grant.
    /// @param expiresAt As in grant.
    /// @param nonce The patient's current nonce (see nonces).
    /// @param deadline Last second the signature may be relayed.
    /// @param v Signature recovery id (27 or 28).
    /// @param r Signature r.
    /// @param s Signature s (low half of the curve order only).
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
    ) external;

    /// @notice Relay a revocation the patient signed as EIP-712 typed data; only active members relay.
    /// @param patient The signing patient.
    /// @param grantee As granted.
    /// @param purpose As granted.
    /// @param studyHash As granted.
    /// @param nonce The patient's current nonce (see nonces).
    /// @param deadline Last second the signature may be relayed.
    /// @param v Signature recovery id (27 or 28).
    /// @param r Signature r.
    /// @param s Signature s (low half of the curve order only).
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
    ) external;

    /// @notice Record an emergency access without consent; visible to the patient and auditors.
    /// @param patient The patient.
    /// @param studyHash The study accessed (zero: not study-specific).
    /// @param reasonCode A coded reason from the consortium's list (never free text).
    function recordBreakGlass(address patient, bytes32 studyHash, uint16 reasonCode) external;

    /// @notice Whether the grantee may access the study for the purpose at the current block.
    /// @param patient The patient.
    /// @param grantee A member's node account (must be active).
    /// @param purpose 0 treatment, 1 research, 2 AI training.
    /// @param studyHash The study, or zero for a question about all studies.
    /// @return True when a matching grant is in force.
    function isPermitted(address patient, address grantee, uint8 purpose, bytes32 studyHash) external view returns (bool);

    /// @notice The stored grant for exactly this key.
    /// @param patient The patient.
    /// @param grantee The grantee key (zero: every member).
    /// @param purpose The purpose.
    /// @param studyHash The study key (zero: every study).
    /// @return The grant.
    function getGrant(address patient, address grantee, uint8 purpose, bytes32 studyHash) external view returns (Grant memory);

    /// @notice The patient's next signature nonce.
    /// @param patient The patient.
    /// @return The nonce.
    function nonces(address patient) external view returns (uint256);

    /// @notice The EIP-712 domain separator of this contract on this chain.
    /// @return The separator.
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}
