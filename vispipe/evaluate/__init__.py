"""Evaluation and inference: metrics on a split, classification of new images,
and per-layer visualization (DIGITS's "test", "classify" and "visualize").

Example:

```python
from vispipe.evaluate import classify, evaluate_run, visualize

result = evaluate_run("runs/mnist", split="test")
print(result.summary_table())
preds = classify("runs/mnist", "new_digits/")
stats = visualize("runs/mnist", "new_digits/3.png", "viz/")
```
"""

from vispipe.evaluate.classify import (
    Prediction,
    accuracy,
    classify,
    predictions_table,
    read_predictions_csv,
    write_predictions_csv,
)
from vispipe.evaluate.evaluator import (
    evaluate_model,
    evaluate_run,
    evaluate_splits,
    predict_probabilities,
)
from vispipe.evaluate.results import EvaluationResult
from vispipe.evaluate.visualize import LayerStats, TensorStats, visualize

__all__ = [
    "EvaluationResult",
    "evaluate_model",
    "evaluate_run",
    "evaluate_splits",
    "predict_probabilities",
    "Prediction",
    "classify",
    "accuracy",
    "predictions_table",
    "read_predictions_csv",
    "write_predictions_csv",
    "LayerStats",
    "TensorStats",
    "visualize",
]
