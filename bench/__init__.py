"""The deskbridge benchmark: SPEC C2's figures against a bare Flask baseline (see README.md)."""
