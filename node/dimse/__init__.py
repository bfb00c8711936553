"""The node's DIMSE service (PS3.7): C-ECHO, C-STORE, C-FIND (Q/R and worklist), C-MOVE, C-GET."""
