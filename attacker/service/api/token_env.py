"""The environment variable that holds the audit API's bearer token: the service reads its token from it and the
clients (``cem-audit-client``, ``cem-demo-report``) send the one they find there. Its own module, free of torch and
of the service's imports, so that torch-free clients share the one name with the service."""

TOKEN_ENV = "CEM_AUDIT_TOKEN"
