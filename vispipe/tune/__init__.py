"""Hyper-parameter search (`vispipe tune`): Optuna over vispipe runs.

Needs the `tune` extra (`pip install 'vispipe[tune]'`, Optuna).

Example:

```python
from vispipe.config_io import load_pipeline
from vispipe.tune import TuneSettings, tune

result = tune(load_pipeline("pipelines/mnist-lenet.yaml"), "tune/mnist",
              TuneSettings(trials=20))
print(result.summary_table())
```
"""

from vispipe.tune.engine import TrialRecord, TuneResult, TuneSettings, tune
from vispipe.tune.space import SearchParam, default_space, parse_space

__all__ = [
    "TuneSettings",
    "TrialRecord",
    "TuneResult",
    "tune",
    "SearchParam",
    "default_space",
    "parse_space",
]
