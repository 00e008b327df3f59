"""Channel administration: the CLI commands and the admin API (SPEC B7)."""
