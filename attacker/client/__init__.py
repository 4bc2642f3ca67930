"""Client of the audit API: ``AuditClient`` for code, ``cem-audit-client`` for the shell."""

from attacker.client.client import AuditClient, AuditClientError

__all__ = ["AuditClient", "AuditClientError"]
