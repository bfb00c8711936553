"""HL7 v2 over MLLP: the order system's messages in, order status and reports out."""
