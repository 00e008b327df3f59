"""The signed inbound webhook: messages from the external service (SPEC B5)."""
