from pathlib import Path

from loopline_core.settings import CoreSettings
from loopline_ml.spec import default_dir
from pydantic import Field


class Settings(CoreSettings):
    """Trainer settings (``LOOPLINE_*``)."""

    signing_key: str
    """Path to the EC private key (PEM) that signs artifacts."""
    trusted_keys_dir: str = ""
    """Public keys accepted when the trainer loads the champion to compare against it."""
    registry_addr: str
    feature_addr: str
    models_dir: Path = Field(default_factory=default_dir)
    """Where the model specs are (``<name>.yaml``); read on every request, so an edit needs no restart."""
