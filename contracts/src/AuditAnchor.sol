// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IAuditAnchor} from "./IAuditAnchor.sol";
import {IConsentRegistry} from "./IConsentRegistry.sol";
import {IConsortiumRegistry} from "./IConsortiumRegistry.sol";

/// @title Audit-log anchors and cross-hospital access records
contract AuditAnchor is IAuditAnchor {
    /// @notice The consortium whose active members write here.
    IConsortiumRegistry public immutable registry;
    /// @notice The consent registry each access is checked against when recorded.
    IConsentRegistry public immutable consent;

    mapping(address => Anchor) private _latest;

    modifier onlyActiveMember() {
        if (!registry.isActiveMember(msg.sender)) revert AuditAnchorNotMember(msg.sender);
        _;
    }

    /// @param registry_ The consortium registry.
    /// @param consent_ The consent registry.
    constructor(IConsortiumRegistry registry_, IConsentRegistry consent_) {
        registry = registry_;
        consent = consent_;
    }

    /// @inheritdoc IAuditAnchor
    function anchor(uint64 treeSize, bytes32 root) external onlyActiveMember {
        if (root == bytes32(0)) revert AuditAnchorEmptyRoot();
        uint64 previous = _latest[msg.sender].treeSize;
        if (treeSize <= previous) revert AuditAnchorNotGrowing(previous, treeSize);
        _latest[msg.sender] = Anchor({treeSize: treeSize, root: root, blockNumber: uint64(block.number)});
        emit Anchored(msg.sender, treeSize, root, previous);
    }

    /// @inheritdoc IAuditAnchor
    function recordAccess(address provider, address patient, bytes32 studyHash, uint8 purpose, bytes32 consentRef)
        external
        onlyActiveMember
    {
        if (purpose >= 3) revert AuditAnchorUnknownPurpose(purpose);
        if (provider == msg.sender) revert AuditAnchorSameMember(provider);
        if (!registry.isActiveMember(provider)) revert AuditAnchorUnknownProvider(provider);
        // Whether consent was in force at this block is fixed on chain for the auditor.
        bool permitted = consent.isPermitted(patient, msg.sender, purpose, studyHash);
        emit CrossHospitalAccess(msg.sender, provider, patient, studyHash, purpose, consentRef, permitted);
    }

    /// @inheritdoc IAuditAnchor
    function latestAnchor(address member) external view returns (Anchor memory) {
        return _latest[member];
    }
}
