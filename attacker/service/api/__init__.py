"""HTTP layer of the audit service: routes, dependencies, schemas."""
