"""The engine's REST API (``kestrel engine serve``): FastAPI routes generated from the
services' signatures (operations.py), bearer-token authentication and one permission
check per route (deps.py), long operations as jobs (jobs.py)."""
