"""vispipe's model server: TF Serving's REST and gRPC APIs and command line over SavedModel version folders.

Imports only TensorFlow, FastAPI, gRPC, tensorflow-serving-api and vispipe's config
checker (no training code, no export tools).
"""

from vispipe.serving.config import BatchingConfig, LimitsConfig, ServerConfig, load_server_config
from vispipe.serving.models_config import ModelSpec, VersionPolicy

__all__ = ["BatchingConfig", "LimitsConfig", "ModelSpec", "ServerConfig", "VersionPolicy", "load_server_config"]
