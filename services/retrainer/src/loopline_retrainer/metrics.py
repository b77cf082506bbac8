from prometheus_client import Counter, Gauge

REQUESTS = Counter("loopline_retrainer_requests_total", "Retraining decisions by outcome (requested, waiting, skipped)",
                   ["model", "outcome"])
RETRAIN_DECISIONS = Counter("loopline_retrainer_retrain_decisions_total",
                            "Retraining decisions by trigger and why (a skip's code, else the outcome)",
                            ["model", "decision", "trigger", "why"])
DECISIONS = Counter("loopline_retrainer_decisions_total", "Promotion decisions", ["model", "decision"])
ROLLOUTS = Counter("loopline_retrainer_rollouts_total", "Rollout steps (started, promoted, rolled_back)",
                   ["model", "decision"])
ROLLOUT_ROWS = Counter("loopline_retrainer_rollout_rows_total", "Prediction rows counted by rollouts",
                       ["model", "arm"])
ROLLOUT_RUNNING = Gauge("loopline_retrainer_rollout_running", "Challenger version under rollout (0: none)",
                        ["model"])
ROLLOUT_RATIO = Gauge("loopline_retrainer_rollout_ratio", "The sequential test's likelihood ratio per signal",
                      ["model", "signal", "test"])
ROLLOUT_RATE = Gauge("loopline_retrainer_rollout_rate", "Observed rate per signal and arm",
                     ["model", "signal", "arm"])
