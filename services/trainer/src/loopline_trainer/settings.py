from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Trainer settings (``LOOPLINE_*``)."""

    signing_key: str
    """Path to the EC private key (PEM) that signs artifacts."""
    trusted_keys_dir: str = ""
    """Public keys accepted when the trainer loads the champion to compare against it."""
    registry_addr: str
    feature_addr: str
