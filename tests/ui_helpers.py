"""Shared by the UI tests: a browser session, and run folders as training writes them."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from vispipe.configs import ModelConfig, TrainConfig
from vispipe.data.format import ImageInput
from vispipe.train.run_folder import RunFolder
from vispipe.train.run_info import Normalization, RunInfo
from vispipe.ui import UISettings, create_app


def browser_client(roots, **kwargs) -> TestClient:
    """A browser session: opened at the token URL, posting with the page's CSRF token.

    `client.settings` is the app's `UISettings`; no job is started.
    """
    settings = UISettings(data_roots=[str(roots)], **kwargs)
    client = TestClient(create_app(settings, start_jobs=False), base_url="http://localhost")
    page = client.get(f"/?token={settings.token}")
    token = re.search(r'<meta name="csrf-token" content="(\w+)">', page.text).group(1)
    client.headers.update({"Origin": "http://localhost", "X-CSRF-Token": token})
    client.settings = settings
    return client


def write_run(run_dir, classes, *, name: str = "pets", weights: str = "",
              status: str = "completed") -> RunInfo:
    """Writes `run_dir/run.json` of a 28x28 grayscale LeNet run (no model); returns its `RunInfo`."""
    info = RunInfo(name=name, dataset_dir=str(run_dir) + "-dataset", classes=list(classes),
                   image=ImageInput(height=28, width=28, channels=1, resize_mode="squash"),
                   normalization=Normalization(mode="scale"),
                   model=ModelConfig(name="lenet", weights=weights),
                   train=TrainConfig(epochs=3), status=status)
    RunFolder(str(run_dir)).write_info(info)
    return info
