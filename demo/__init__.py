"""One-command demo: train, serve, tap, attack and report, all on loopback."""
