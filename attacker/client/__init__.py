"""Client of the audit API: ``AuditClient`` for code, ``cem-audit-client`` for the shell.

Besides the client, this is the API's vocabulary a caller needs to submit an audit
and read its answer (attack names, audit statuses, the audit view), so that code
outside the attacker app (the demo) imports this one package and none of the
service's modules.
"""

from attacker.attack_names import ATTACKS, NETWORK_ATTACKS, OPTIMIZING_ATTACKS, AttackName, check_attack_name
from attacker.client.client import TOKEN_ENV, URL_ENV, AuditClient, AuditClientError
from attacker.service.api.schemas import AuditView
from attacker.service.jobs import AuditStatus

__all__ = [
    "ATTACKS",
    "AttackName",
    "AuditClient",
    "AuditClientError",
    "AuditStatus",
    "AuditView",
    "NETWORK_ATTACKS",
    "OPTIMIZING_ATTACKS",
    "TOKEN_ENV",
    "URL_ENV",
    "check_attack_name",
]
