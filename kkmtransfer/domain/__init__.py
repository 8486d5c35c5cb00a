"""The ledger's rules: pure Python, no database, no SOAP, no HTTP."""
