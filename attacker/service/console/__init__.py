"""The audit console: server-rendered pages (Jinja2) where an auditor runs, watches and compares audits.

Served by ``cem-audit`` itself under ``/console``. The REST API keeps its bearer
token; a browser logs in once with the same token and holds a signed session
cookie instead (``session``), and every state-changing form carries a CSRF token.
"""
