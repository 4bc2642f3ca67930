"""The attacker and auditor: channel tap, model inversion attacks, REST audit service."""
