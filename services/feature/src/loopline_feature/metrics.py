from prometheus_client import Counter, Histogram

LOGGED = Counter("loopline_feature_events_total", "Source events written to a view's log", ["view", "outcome"])
LABELS = Counter("loopline_feature_labels_total", "Labels recorded")
SERVED = Counter("loopline_feature_online_rows_total", "Entity rows served by GetOnlineFeatures", ["view", "found"])
BUILT = Histogram("loopline_feature_training_set_rows", "Rows per training set built", ["view"],
                  buckets=(10, 100, 1_000, 10_000, 100_000, 1_000_000))
