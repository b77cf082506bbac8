from prometheus_client import Counter

REQUESTS = Counter("loopline_retrainer_requests_total", "Retraining triggers", ["model", "outcome"])
DECISIONS = Counter("loopline_retrainer_decisions_total", "Promotion decisions", ["model", "decision"])
