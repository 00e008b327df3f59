"""The use cases: ingest messages and build pull batches (inbox), push replies (replies)."""
