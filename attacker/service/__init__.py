"""The REST audit service: FastAPI app, SQLite job store, worker processes, HTML report."""
