"""Plain domain types and errors: messages, replies, outcomes. No HTTP, no database."""
