"""Flask only: parse, authenticate, call one use case, serialize."""
