// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IConsortiumRegistry} from "./IConsortiumRegistry.sol";

/// @title Consortium membership by majority vote
contract ConsortiumRegistry is IConsortiumRegistry {
    /// @notice How long a proposal stays open for votes.
    uint64 public immutable votingPeriod;

    mapping(address => Member) private _members;
    mapping(bytes32 => address) private _accountOfHospital;
    address[] private _accounts;
    uint256 private _activeCount;

    mapping(uint256 => Proposal) private _proposals;
    // Voters per proposal, so a tally counts only voters who are still active members.
    mapping(uint256 => address[]) private _yesVoters;
    mapping(uint256 => address[]) private _noVoters;
    mapping(uint256 => mapping(address => bool)) private _voted;
    uint256 private _proposalCount;

    modifier onlyActiveMember() {
        if (_members[msg.sender].status != MemberStatus.Active) {
            revert ConsortiumRegistryNotMember(msg.sender);
        }
        _;
    }

    /// @param founders The founding members, active from deployment.
    /// @param votingPeriod_ Seconds a proposal stays open.
    constructor(Member[] memory founders, uint64 votingPeriod_) {
        if (founders.length == 0) revert ConsortiumRegistryNoFounders();
        votingPeriod = votingPeriod_;
        for (uint256 i = 0; i < founders.length; i++) {
            Member memory f = founders[i];
            _admit(f.account, f.hospitalId, f.endpoint, f.tlsFingerprint);
        }
    }

    /// @inheritdoc IConsortiumRegistry
    function propose(
        ProposalKind kind,
        address account,
        bytes32 hospitalId,
        string calldata endpoint,
        bytes32 tlsFingerprint
    ) external onlyActiveMember returns (uint256 proposalId) {
        if (account == address(0)) revert ConsortiumRegistryInvalidMember();
        MemberStatus status = _members[account].status;
        if (kind == ProposalKind.Add) {
            if (status == MemberStatus.Active) revert ConsortiumRegistryAlreadyMember(account);
            if (hospitalId == bytes32(0)) revert ConsortiumRegistryInvalidMember();
            if (_accountOfHospital[hospitalId] != address(0)) {
                revert ConsortiumRegistryHospitalIdTaken(hospitalId);
            }
        } else {
            if (status != MemberStatus.Active) revert ConsortiumRegistryUnknownMember(account);
            if (kind == ProposalKind.Update) {
                address holder = _accountOfHospital[hospitalId];
                if (hospitalId == bytes32(0)) revert ConsortiumRegistryInvalidMember();
                if (holder != address(0) && holder != account) {
                    revert ConsortiumRegistryHospitalIdTaken(hospitalId);
                }
            }
        }
        proposalId = ++_proposalCount;
        uint64 deadline = uint64(block.timestamp) + votingPeriod;
        _proposals[proposalId] = Proposal({
            kind: kind,
            status: ProposalStatus.Open,
            account: account,
            hospitalId: hospitalId,
            endpoint: endpoint,
            tlsFingerprint: tlsFingerprint,
            proposer: msg.sender,
            deadline: deadline,
            yesVotes: 0,
            noVotes: 0
        });
        emit ProposalCreated(proposalId, kind, account, msg.sender, deadline);
        _castVote(proposalId, true);
    }

    /// @inheritdoc IConsortiumRegistry
    function vote(uint256 proposalId, bool support) external onlyActiveMember {
        Proposal storage p = _proposals[proposalId];
        if (p.status == ProposalStatus.None) revert ConsortiumRegistryUnknownProposal(proposalId);
        if (p.status != ProposalStatus.Open) revert ConsortiumRegistryProposalClosed(proposalId);
        if (block.timestamp > p.deadline) {
            revert ConsortiumRegistryProposalExpired(proposalId, p.deadline);
        }
        _castVote(proposalId, support);
    }

    /// @inheritdoc IConsortiumRegistry
    function isActiveMember(address account) external view returns (bool) {
        return _members[account].status == MemberStatus.Active;
    }

    /// @inheritdoc IConsortiumRegistry
    function getMember(address account) external view returns (Member memory) {
        return _members[account];
    }

    /// @inheritdoc IConsortiumRegistry
    function accountOf(bytes32 hospitalId) external view returns (address) {
        return _accountOfHospital[hospitalId];
    }

    /// @inheritdoc IConsortiumRegistry
    function memberAccounts() external view returns (address[] memory) {
        return _accounts;
    }

    /// @inheritdoc IConsortiumRegistry
    function activeMemberCount() external view returns (uint256) {
        return _activeCount;
    }

    /// @inheritdoc IConsortiumRegistry
    function getProposal(uint256 proposalId) external view returns (Proposal memory) {
        return _proposals[proposalId];
    }

    /// @inheritdoc IConsortiumRegistry
    function proposalCount() external view returns (uint256) {
        return _proposalCount;
    }

    function _castVote(uint256 proposalId, bool support) private {
        if (_voted[proposalId][msg.sender]) {
            revert ConsortiumRegistryAlreadyVoted(proposalId, msg.sender);
        }
        _voted[proposalId][msg.sender] = true;
        if (support) {
            _yesVoters[proposalId].push(msg.sender);
        } else {
            _noVoters[proposalId].push(msg.sender);
        }
        emit VoteCast(proposalId, msg.sender, support);

        Proposal storage p = _proposals[proposalId];
        uint32 yes = _countActive(_yesVoters[proposalId]);
        uint32 no = _countActive(_noVoters[proposalId]);
        p.yesVotes = yes;
        p.noVotes = no;
        // Strict majority of the members active now; a tie can never pass.
        if (uint256(yes) * 2 > _activeCount) {
            p.status = ProposalStatus.Executed;
            _execute(p);
            emit ProposalExecuted(proposalId);
        } else if (uint256(no) * 2 >= _activeCount) {
            p.status = ProposalStatus.Rejected;
            emit ProposalRejected(proposalId);
        }
    }

    function _countActive(address[] storage voters) private view returns (uint32 n) {
        for (uint256 i = 0; i < voters.length; i++) {
            if (_members[voters[i]].status == MemberStatus.Active) n++;
        }
    }

    function _execute(Proposal storage p) private {
        if (p.kind == ProposalKind.Add) {
            // Re-checked: another proposal may have taken the id or admitted the account.
            if (_members[p.account].status == MemberStatus.Active) {
                revert ConsortiumRegistryAlreadyMember(p.account);
            }
            if (_accountOfHospital[p.hospitalId] != address(0)) {
                revert ConsortiumRegistryHospitalIdTaken(p.hospitalId);
            }
            _admit(p.account, p.hospitalId, p.endpoint, p.tlsFingerprint);
        } else if (p.kind == ProposalKind.Update) {
            Member storage m = _members[p.account];
            if (m.status != MemberStatus.Active) revert ConsortiumRegistryUnknownMember(p.account);
            address holder = _accountOfHospital[p.hospitalId];
            if (holder != address(0) && holder != p.account) {
                revert ConsortiumRegistryHospitalIdTaken(p.hospitalId);
            }
            delete _accountOfHospital[m.hospitalId];
            m.hospitalId = p.hospitalId;
            m.endpoint = p.endpoint;
            m.tlsFingerprint = p.tlsFingerprint;
            _accountOfHospital[p.hospitalId] = p.account;
            emit MemberUpdated(p.account, p.hospitalId, p.endpoint, p.tlsFingerprint);
        } else {
            Member storage m = _members[p.account];
            if (m.status != MemberStatus.Active) revert ConsortiumRegistryUnknownMember(p.account);
            if (_activeCount == 1) revert ConsortiumRegistryLastMember(p.account);
            m.status = MemberStatus.Removed;
            _activeCount--;
            delete _accountOfHospital[m.hospitalId];
            emit MemberRemoved(p.account, m.hospitalId);
        }
    }

    function _admit(address account, bytes32 hospitalId, string memory endpoint, bytes32 tlsFingerprint) private {
        if (account == address(0) || hospitalId == bytes32(0)) revert ConsortiumRegistryInvalidMember();
        if (_members[account].status == MemberStatus.Active) revert ConsortiumRegistryAlreadyMember(account);
        if (_accountOfHospital[hospitalId] != address(0)) revert ConsortiumRegistryHospitalIdTaken(hospitalId);
        if (_members[account].status == MemberStatus.None) _accounts.push(account);
        _members[account] = Member({
            hospitalId: hospitalId,
            account: account,
            endpoint: endpoint,
            tlsFingerprint: tlsFingerprint,
            status: MemberStatus.Active
        });
        _accountOfHospital[hospitalId] = account;
        _activeCount++;
        emit MemberAdded(account, hospitalId, endpoint, tlsFingerprint);
    }
}
