"""The use cases: ingest, pull, push and deliver_reply, channel operations."""
