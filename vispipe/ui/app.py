"""`create_app`: the FastAPI application of `vispipe ui`.

Pages are Jinja2 templates with autoescaping on; static assets (CSS, the
chart and page scripts, TF.js from npm) are served by the app itself.

Example:

```python
import uvicorn
app = create_app(UISettings(data_roots=["/data"], max_jobs=2))
uvicorn.run(app, port=5000)
```
"""

from __future__ import annotations

import contextlib
import hmac
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from vispipe.ui.jobs import JobQueue
from vispipe.ui.settings import UISettings, UnsafeInputError
from vispipe.ui.views import format_duration

__all__ = ["create_app", "render", "TFJS_FILE"]

_HERE = os.path.dirname(os.path.abspath(__file__))
TFJS_FILE = os.path.join(_HERE, "js", "node_modules", "@tensorflow", "tfjs", "dist", "tf.min.js")
_TOKEN_COOKIE = "vispipe_token"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(os.path.join(_HERE, "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["duration"] = format_duration
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.2f}%"
    env.filters["basename"] = os.path.basename
    return env


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Renders a template of `vispipe/ui/templates` with the request in its context."""
    env: Environment = request.app.state.templates
    html = env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)


def create_app(settings: UISettings, *, start_jobs: bool = True) -> FastAPI:
    """The web UI application.

    Args:
        settings: Data roots, token, job limit, upload limit, home folder.
        start_jobs: Run the job queue (off only to look at pages without
            starting workers).

    Returns:
        A FastAPI app; its lifespan recovers and starts the job queue and,
        on shutdown, ends running jobs (they are marked "interrupted").

    Example:

    ```python
    from fastapi.testclient import TestClient
    with TestClient(create_app(UISettings(data_roots=[str(tmp)]))) as client:
        assert client.get("/").status_code == 200
    ```
    """
    from vispipe.ui import pages_classify, pages_datasets, pages_home, pages_models, pages_runs

    queue = JobQueue(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_jobs:
            queue.start()
        try:
            yield
        finally:
            if start_jobs:
                queue.stop()

    app = FastAPI(title="vispipe", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.settings = settings
    app.state.queue = queue
    app.state.templates = _environment()
    app.mount("/static", StaticFiles(directory=os.path.join(_HERE, "static")), name="static")

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not settings.token:
            return await call_next(request)
        header = request.headers.get("authorization", "")
        offered = (header[7:] if header.lower().startswith("bearer ") else
                   request.query_params.get("token") or request.cookies.get(_TOKEN_COOKIE) or "")
        if not hmac.compare_digest(offered.encode(), settings.token.encode()):
            return PlainTextResponse("vispipe ui: a valid token is required "
                                     "(open the URL with ?token=...).", status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(_TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(UnsafeInputError)
    async def unsafe_input(request: Request, error: UnsafeInputError):
        return render(request, "error.html", status_code=400, message=str(error))

    @app.get("/vendor/tf.min.js", include_in_schema=False)
    def tfjs_library():
        if not os.path.isfile(TFJS_FILE):
            return PlainTextResponse(
                "TF.js is not installed: run `bash vispipe/ui/js/install.sh`.", status_code=404)
        return FileResponse(TFJS_FILE, media_type="text/javascript")

    for module in (pages_home, pages_datasets, pages_models, pages_runs, pages_classify):
        app.include_router(module.router)
    return app
