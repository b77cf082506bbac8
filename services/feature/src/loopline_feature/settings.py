from pathlib import Path

from loopline_core.settings import CoreSettings
from pydantic import Field

from loopline_feature.adapters.catalog import default_dir


class Settings(CoreSettings):
    """Feature service settings (``LOOPLINE_*``)."""

    feature_port: int = 50052
    """gRPC port (0 picks a free one)."""
    feature_views_dir: Path = Field(default_factory=default_dir)
    """Where the feature view files are (``<name>/v<version>.yaml``)."""
    feature_max_entities: int = 1000
    """The most entities one GetOnlineFeatures call may ask for."""
