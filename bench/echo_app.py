"""A bare FastAPI echo endpoint: the ceiling of the stack (uvicorn + uvloop + httptools + FastAPI) here.

It parses the urlencoded form body as a token endpoint must and answers small JSON, with nothing else
(no middleware, no database). Served by ``bench/run.py`` as
``uvicorn --factory echo_app:create_app --loop uvloop --http httptools --no-access-log``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from idhub.app import framework_options


def create_app() -> FastAPI:
    """Build the echo app."""
    # The same framework options as idhub (its OpenTelemetry hooks off), so the ceiling is comparable.
    app = FastAPI(**framework_options(), openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        """Echo the form fields back as JSON."""
        fields = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        return JSONResponse({name: value for name, value in fields}, headers={"cache-control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Answer while the process is up."""
        return {"status": "ok"}

    return app
