"""Adapters: the database, the SOAP service, files, tasks and the CLI talk to the domain through here."""
