"""A job's typed config, written into its job folder for `vispipe VERB --config job.yaml`.

The UI never re-encodes a setting as a command-line flag: a form becomes
the same dataclasses the CLI checks (`vispipe.configs`, `ExportOptions`,
`ServerConfig`), checked by `vispipe.config_io` as a `--config` file is,
and the job runs `vispipe VERB --config <job folder>/job.yaml` plus only
the operands that are not settings (`--run`, `--dataset`, `--out`).
`log.txt` and `job.yaml` together say exactly what ran.

The file is the pipeline tree's shape (`{"train": TrainConfig, ...}`,
only the sections the verb reads), or one dataclass at the root for a verb
whose `--config` is its own section (`vispipe serve` reads a `ServerConfig`).

Example:

```python
path = write_job_config(job_dir, {"evaluate": EvaluateConfig(splits=["test"])})
argv = ["evaluate", "--run", run_dir, "--config", path]
```
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from vispipe.config_io import ConfigError, expand_env, validate_config
from vispipe.fileio import write_text_atomic

__all__ = ["JOB_CONFIG_FILE", "JobConfig", "config_text", "write_job_config"]

JOB_CONFIG_FILE = "job.yaml"

# Sections by name (each a dataclass, or a partial mapping such as a resume's
# `{"train": {"epochs": 30}}`), or one dataclass at the root.
JobConfig = Mapping[str, Any] | Any


def _plain(value: Any, where: str) -> Any:
    """Dataclasses (checked first), tuples and mappings as YAML's plain types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        validate_config(value, where)
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    return value


def config_text(config: JobConfig) -> str:
    """The YAML of a job's config, checked as the CLI will read it.

    Raises:
        ConfigError: A value the config classes do not allow (named), or
            text that a config file would not read back as written: `${NAME}`
            is expanded as an environment variable there.
    """
    text = yaml.safe_dump(_plain(config, ""), sort_keys=False, allow_unicode=True)
    try:
        unchanged = expand_env(text) == text
    except ConfigError:
        unchanged = False
    if not unchanged:
        raise ConfigError("a value holds '${', which config files read as an environment "
                          "variable; expected names and paths without it")
    return text


def write_job_config(job_dir: str, config: JobConfig) -> str:
    """Writes `job_dir/job.yaml` atomically; returns its path.

    Args:
        job_dir: The job folder.
        config: The verb's sections, or its root dataclass.

    Raises:
        ConfigError: See `config_text`.
    """
    return write_text_atomic(os.path.join(job_dir, JOB_CONFIG_FILE), config_text(config))
