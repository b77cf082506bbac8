from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Registry settings (``LOOPLINE_*``)."""

    registry_port: int = 50051
    """gRPC port (0 picks a free one)."""
    outbox_flush_s: float = 2.0
    """After a change, how long a call waits for the relay to publish its event before answering
    anyway (the event is committed and follows later)."""
    archive_prefix: str = ""
    """Root inside ``loopline-raw`` of the raw archive, as ingest writes it (the same variable), for lineage."""

    @property
    def archive_root(self) -> str:
        """``<prefix>/``, or "" without one (how ``loopline replay`` reads the same setting)."""
        prefix = self.archive_prefix.strip("/")
        return prefix + "/" if prefix else ""
