"""Use cases: one unit of work (one transaction) each."""
