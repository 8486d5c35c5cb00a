"""Domain errors. Each carries the contract's fault code, so an adapter can map it 1:1."""
from __future__ import annotations


class DomainError(Exception):
    code = "Client"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationError(DomainError):
    code = "Client.ValidationError"


class CardNotFound(DomainError):
    code = "Client.CardNotFound"


class CardBlocked(DomainError):
    code = "Client.CardBlocked"


class InsufficientBonus(DomainError):
    code = "Client.InsufficientBonus"


class OperationConflict(DomainError):
    code = "Client.OperationConflict"


class OriginalNotFound(DomainError):
    code = "Client.OriginalNotFound"


class ReturnExceedsSale(DomainError):
    code = "Client.ReturnExceedsSale"


class AmbiguousPhone(DomainError):
    code = "Client.AmbiguousPhone"


class HoldNotFound(DomainError):
    code = "Client.HoldNotFound"


class HoldAlreadyConfirmed(DomainError):
    code = "Client.HoldAlreadyConfirmed"
