"""kkmtransfer: a discount-card billing server for cash registers (SOAP)."""

__version__ = "0.1.0"
