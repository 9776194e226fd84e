"""The web console and the REST API (`/api/v1`): FastAPI, server-rendered pages, no external assets."""
