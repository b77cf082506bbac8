from prometheus_client import Counter, Gauge, Histogram

ALERTS = Counter("loopline_monitor_alerts_total", "Alerts raised (first and repeats)", ["model", "kind", "severity"])
SILENCED = Counter("loopline_monitor_alerts_silenced_total", "Alerts a silence held back", ["model", "kind"])
PREDICTIONS = Counter("loopline_monitor_predictions_total", "Predictions taken in, by outcome",
                      ["model", "outcome"])
DRIFT_SHARE = Gauge("loopline_monitor_drift_share", "Share of drifted columns in the last window",
                    ["model", "version"])
COLUMN_SCORE = Gauge("loopline_monitor_column_drift_score", "Last drift statistic per column (a p-value for "
                     "ks/chisquare/z, a distance otherwise)", ["model", "column", "stattest"])
PERFORMANCE = Gauge("loopline_monitor_performance", "Performance over the newest labelled predictions",
                    ["model", "version", "variant", "metric"])
SERVED = Counter("loopline_monitor_served_predictions_total", "Predictions taken in per version, role (champion, "
                 "challenger, shadow) and variant: which version serves each model over time",
                 ["model", "version", "role", "variant"])
LABELS_JOINED = Counter("loopline_monitor_labels_joined_total", "Labels joined to predictions", ["model"])
LABELS_DEAD = Counter("loopline_monitor_labels_dead_lettered_total", "Labels whose prediction never came",
                      ["dataset"])
LABEL_DELAY = Histogram("loopline_monitor_label_delay_seconds", "Label time minus prediction time", ["model"],
                        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400))
EVAL_SECONDS = Histogram("loopline_monitor_evaluation_seconds", "Time to evaluate one window", ["model"],
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
GENERATIONS = Counter("loopline_monitor_generations_total", "Generations taken in, by outcome", ["model", "outcome"])
LLM_WINDOW = Gauge("loopline_monitor_llm_window", "Last text window of a version: text drift (mmd2, mmd_p_value, "
                   "centroid_distance) and output quality (refusal_rate, guardrail_rate, length_p_value, "
                   "latency_per_token_p95_ms)", ["model", "version", "metric"])
LLM_SPEND = Gauge("loopline_monitor_llm_spend", "Rolling spend within the budget's window", ["model", "currency"])
LLM_BUDGET_SHARE = Gauge("loopline_monitor_llm_budget_share", "Rolling spend / budget", ["model"])
FEEDBACK = Counter("loopline_monitor_feedback_total", "Feedback taken in, by outcome (joined, waiting, repeat, "
                   "dead_lettered)", ["model", "outcome"])
FEEDBACK_QUALITY = Gauge("loopline_monitor_feedback_quality", "Per version: rated, thumbs_up_rate, mean_score, "
                         "corrections", ["model", "version", "metric"])
EMBED_SECONDS = Histogram("loopline_monitor_embed_seconds", "MiniLM embedding of one batch of inputs", ["model"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
