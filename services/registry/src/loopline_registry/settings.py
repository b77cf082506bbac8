from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Registry settings (``LOOPLINE_*``)."""

    registry_port: int = 0
    """gRPC port; 0 picks a free one."""
    outbox_flush_s: float = 2.0
    """After a change, how long a call waits for the relay to publish its event before answering
    anyway (the event is committed and follows later)."""
