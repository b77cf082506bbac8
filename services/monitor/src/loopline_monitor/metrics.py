from prometheus_client import Counter, Gauge

ALERTS = Counter("loopline_monitor_alerts_total", "Drift alerts raised", ["model"])
MAX_PSI = Gauge("loopline_monitor_max_psi", "Largest per-feature PSI of the last window", ["model"])
