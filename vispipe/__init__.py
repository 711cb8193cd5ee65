"""vispipe: the DIGITS image-classification workflow on TensorFlow 2 and Keras 3.

Stages, each a CLI verb and a Python module:
`vispipe.data` (datasets), `vispipe.models` (networks), `vispipe.train`
(training), `vispipe.evaluate` (evaluation and inference); `vispipe.pipeline`
runs them from one declarative file. Heavy modules import TensorFlow lazily,
so `import vispipe` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
