"""Users, tokens and access policy (issue #6): who is calling and what they may do."""
