from prometheus_client import Counter

LOGGED = Counter("loopline_feature_events_total", "Events written to the offline log", ["outcome"])
LABELS = Counter("loopline_feature_labels_total", "Labels recorded")
