"""vispipe's model server: TF Serving's REST and gRPC APIs over SavedModel version folders.

Imports only TensorFlow, FastAPI, gRPC and tensorflow-serving-api (no export tools).
"""

from vispipe.serving.config import BatchingConfig, LimitsConfig, ModelSpec, ServerConfig, VersionPolicy

__all__ = ["BatchingConfig", "LimitsConfig", "ModelSpec", "ServerConfig", "VersionPolicy"]
