"""`create_app`: the FastAPI application of `vispipe ui`.

Pages are Jinja2 templates with autoescaping on (`vispipe.ui.templating`);
static assets (CSS, the chart and page scripts, TF.js from npm) are served by
the app itself. Every request passes `vispipe.ui.security.RequestGuard`
(Host, token, same-origin checks, security headers) and `BodyLimit`;
every state-changing one also `require_csrf`.

Example:

```python
import uvicorn
app = create_app(UISettings(data_roots=["/data"], max_jobs=2))
uvicorn.run(app, port=5000)
```
"""

from __future__ import annotations

import contextlib
import os
import secrets

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from vispipe.ui import (pages_classify, pages_compare, pages_datasets, pages_home,
                        pages_mislabels, pages_models, pages_runs)
from vispipe.ui.jobs import JobQueue
from vispipe.ui.security import RequestGuard, require_csrf
from vispipe.ui.settings import UISettings, UnsafeInputError
from vispipe.ui.templating import render
from vispipe.ui.uploads import FORM_OVERHEAD, BodyLimit

__all__ = ["create_app", "TFJS_FILE"]

_HERE = os.path.dirname(os.path.abspath(__file__))
# The ES2017 build: the ES5 one installs a regenerator runtime through Function(),
# which the pages' Content-Security-Policy (no eval) refuses.
TFJS_FILE = os.path.join(_HERE, "js", "node_modules", "@tensorflow", "tfjs", "dist",
                         "tf.es2017.min.js")


def create_app(settings: UISettings, *, start_jobs: bool = True) -> FastAPI:
    """The web UI application.

    Args:
        settings: Data roots, token, allowed hosts, job limit, upload limit,
            home folder.
        start_jobs: Run the job queue (off only to look at pages without
            starting workers).

    Returns:
        A FastAPI app; its lifespan recovers and starts the job queue and,
        on shutdown, ends running jobs (they are marked "interrupted").

    Example:

    ```python
    from fastapi.testclient import TestClient
    settings = UISettings(data_roots=[str(tmp)])
    with TestClient(create_app(settings), base_url="http://localhost",
                    headers={"Authorization": f"Bearer {settings.token}"}) as client:
        assert client.get("/").status_code == 200
    ```
    """
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
                  openapi_url=None, dependencies=[Depends(require_csrf)])
    app.state.settings = settings
    app.state.queue = queue
    app.state.csrf_key = secrets.token_bytes(32)
    app.mount("/static", StaticFiles(directory=os.path.join(_HERE, "static")), name="static")
    # The last added runs first: the guard sees every request, and adds its
    # headers to every response, the body limit's 413 included.
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(RequestGuard, settings=settings)

    @app.exception_handler(UnsafeInputError)
    async def unsafe_input(request: Request, error: UnsafeInputError):
        return render(request, "error.html", status_code=400, message=str(error))

    @app.get("/vendor/tf.es2017.min.js", include_in_schema=False)
    def tfjs_library():
        if not os.path.isfile(TFJS_FILE):
            return PlainTextResponse(
                "TF.js is not installed: run `bash vispipe/ui/js/install.sh`.", status_code=404)
        return FileResponse(TFJS_FILE, media_type="text/javascript")

    for module in (pages_home, pages_datasets, pages_models, pages_runs, pages_classify,
                   pages_compare, pages_mislabels):
        app.include_router(module.router)
    return app
