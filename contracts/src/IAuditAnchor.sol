// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Anchors of each member's append-only audit log, and cross-hospital access records
/// @notice A member's anchors must grow; an auditor checks off chain that each anchored root is
///         consistent (RFC 6962 consistency proof) with the previous one.
interface IAuditAnchor {
    struct Anchor {
        uint64 treeSize;
        bytes32 root;
        uint64 blockNumber;
    }

    error AuditAnchorNotMember(address account);
    error AuditAnchorNotGrowing(uint64 previousSize, uint64 treeSize);
    error AuditAnchorEmptyRoot();
    error AuditAnchorUnknownProvider(address provider);
    error AuditAnchorSameMember(address member);
    error AuditAnchorUnknownPurpose(uint8 purpose);

    event Anchored(address indexed member, uint64 indexed treeSize, bytes32 root, uint64 previousSize);
    event CrossHospitalAccess(
        address indexed requester,
        address indexed provider,
        address indexed patient,
        bytes32 studyHash,
        uint8 purpose,
        bytes32 consentRef,
        bool permitted
    );

    /// @notice Anchor the sender's audit log at (treeSize, root); treeSize must exceed the last.
    /// @param treeSize Number of entries in the log.
    /// @param root RFC 6962 Merkle tree head of those entries.
    function anchor(uint64 treeSize, bytes32 root) external;

    /// @notice Record one cross-hospital access by the sender (the requester).
    /// @param provider The member that holds the data.
    /// @param patient The patient's pseudonymous address.
    /// @param studyHash keccak256 of the Study Instance UID (zero: not study-specific).
    /// @param purpose 0 treatment, 1 research, 2 AI training.
    /// @param consentRef The grant key relied on, or a break-glass transaction hash.
    function recordAccess(address provider, address patient, bytes32 studyHash, uint8 purpose, bytes32 consentRef) external;

    /// @notice The member's latest anchor (treeSize zero when none).
    /// @param member The member's node account.
    /// @return The anchor.
    function latestAnchor(address member) external view returns (Anchor memory);
}
