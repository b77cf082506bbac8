from prometheus_client import Counter

VALIDATED = Counter("loopline_validator_records_total", "Records checked against their contract",
                    ["dataset", "outcome"])
