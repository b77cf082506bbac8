from prometheus_client import Counter, Histogram

RUNS = Counter("loopline_trainer_runs_total", "Training requests handled", ["outcome"])
TRAIN_SECONDS = Histogram("loopline_trainer_train_seconds", "Time spent fitting one model")
