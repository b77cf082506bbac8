from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Ingest settings (``LOOPLINE_*``)."""

    ingest_datasets: list[str] = ["transactions"]
    ingest_entity_field: str = "customer_id"
    """Payload field used as the Kafka key downstream, so one customer's events stay in order."""
