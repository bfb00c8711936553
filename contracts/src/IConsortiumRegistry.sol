// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title The member hospitals of a pacsmesh consortium
/// @notice Founding members are set at deployment; afterwards members are added, updated and
///         removed only by a majority vote of the members active at the time of the vote.
interface IConsortiumRegistry {
    enum MemberStatus { None, Active, Removed }
    enum ProposalKind { Add, Update, Remove }
    enum ProposalStatus { None, Open, Executed, Rejected }

    struct Member {
        bytes32 hospitalId;
        address account;
        string endpoint;
        bytes32 tlsFingerprint;
        MemberStatus status;
    }

    struct Proposal {
        ProposalKind kind;
        ProposalStatus status;
        address account;
        bytes32 hospitalId;
        string endpoint;
        bytes32 tlsFingerprint;
        address proposer;
        uint64 deadline;
        uint32 yesVotes;
        uint32 noVotes;
    }

    error ConsortiumRegistryNotMember(address account);
    error ConsortiumRegistryAlreadyMember(address account);
    error ConsortiumRegistryUnknownMember(address account);
    error ConsortiumRegistryHospitalIdTaken(bytes32 hospitalId);
    error ConsortiumRegistryInvalidMember();
    error ConsortiumRegistryNoFounders();
    error ConsortiumRegistryUnknownProposal(uint256 proposalId);
    error ConsortiumRegistryProposalClosed(uint256 proposalId);
    error ConsortiumRegistryProposalExpired(uint256 proposalId, uint64 deadline);
    error ConsortiumRegistryAlreadyVoted(uint256 proposalId, address voter);
    error ConsortiumRegistryLastMember(address account);

    event MemberAdded(address indexed account, bytes32 indexed hospitalId, string endpoint, bytes32 tlsFingerprint);
    event MemberUpdated(address indexed account, bytes32 indexed hospitalId, string endpoint, bytes32 tlsFingerprint);
    event MemberRemoved(address indexed account, bytes32 indexed hospitalId);
    event ProposalCreated(uint256 indexed proposalId, ProposalKind indexed kind, address indexed account, address proposer, uint64 deadline);
    event VoteCast(uint256 indexed proposalId, address indexed voter, bool support);
    event ProposalExecuted(uint256 indexed proposalId);
    event ProposalRejected(uint256 indexed proposalId);

    /// @notice Propose adding, updating or removing a member; the proposer's yes vote is counted.
    /// @param kind Add, Update or Remove.
    /// @param account The member's node account.
    /// @param hospitalId The hospital's identifier (ignored for Remove).
    /// @param endpoint The node's network endpoint URL (ignored for Remove).
    /// @param tlsFingerprint SHA-256 of the node's TLS certificate (ignored for Remove).
    /// @return proposalId The new proposal's id.
    function propose(ProposalKind kind, address account, bytes32 hospitalId, string calldata endpoint, bytes32 tlsFingerprint) external returns (uint256 proposalId);

    /// @notice Vote on an open proposal; it executes once a majority of active members say yes.
    /// @param proposalId The proposal.
    /// @param support True for yes.
    function vote(uint256 proposalId, bool support) external;

    /// @notice Whether the account is an active member now.
    /// @param account A node account.
    /// @return True when active.
    function isActiveMember(address account) external view returns (bool);

    /// @notice A member's record (status None when never a member).
    /// @param account A node account.
    /// @return The member record.
    function getMember(address account) external view returns (Member memory);

    /// @notice The account of the active member with this hospital id (zero when none).
    /// @param hospitalId The hospital's identifier.
    /// @return The node account.
    function accountOf(bytes32 hospitalId) external view returns (address);

    /// @notice Every account that has ever been a member, in order of admission.
    /// @return The accounts.
    function memberAccounts() external view returns (address[] memory);

    /// @notice How many members are active now.
    /// @return The count.
    function activeMemberCount() external view returns (uint256);

    /// @notice A proposal's record.
    /// @param proposalId The proposal.
    /// @return The proposal.
    function getProposal(uint256 proposalId) external view returns (Proposal memory);

    /// @notice How many proposals were ever made (ids run from 1 to this count).
    /// @return The count.
    function proposalCount() external view returns (uint256);
}
