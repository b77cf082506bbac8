from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Registry settings (``LOOPLINE_*``)."""

    registry_port: int = 0
    """gRPC port; 0 picks a free one."""
