from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Inference settings (``LOOPLINE_*``)."""

    inference_port: int = 0
    inference_models: list[str] = ["fraud"]
    """Model names served; each serves its ``champion`` alias."""
    trusted_keys_dir: str
    registry_addr: str
    inference_reconcile_s: float = 15.0
    """How often to re-resolve aliases, in case a model event was missed."""
