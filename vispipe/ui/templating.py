"""The pages' Jinja2 environment and `render`.

Autoescaping is on for every template. Each page gets the request, its
session's CSRF token (`csrf_token`, also in `<meta name="csrf-token">`) and
`csrf_input`, the hidden form field that every POST form carries.

Example:

```python
@router.get("/")
def home(request: Request):
    return render(request, "home.html", panes=panes)
```
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from vispipe.ui.security import CSRF_FIELD, csrf_token, remember_session
from vispipe.ui.views import format_duration

__all__ = ["TEMPLATES", "environment", "render"]

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def environment() -> Environment:
    """The environment of `vispipe/ui/templates`, with the pages' filters."""
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["duration"] = format_duration
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.2f}%"
    env.filters["basename"] = os.path.basename
    return env


_ENVIRONMENT = environment()


def render(request: Request, template: str, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    """Renders a template of `vispipe/ui/templates` with the request in its context.

    Args:
        request: The request being answered.
        template: The template's file name.
        status_code: The response's status.
        **context: The template's variables.

    Returns:
        The page; a browser's first page also sets its session cookie.
    """
    token = csrf_token(request)
    field = Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token)
    html = _ENVIRONMENT.get_template(template).render(request=request, csrf_token=token,
                                                      csrf_input=field, **context)
    response = HTMLResponse(html, status_code=status_code)
    remember_session(request, response)
    return response
