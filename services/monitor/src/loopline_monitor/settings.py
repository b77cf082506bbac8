from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Monitor settings (``LOOPLINE_*``)."""

    monitor_models: list[str] = ["fraud"]
    monitor_dataset: str = "transactions"
    """Whose labels (``loopline.labels.<dataset>``) are joined to the predictions."""
    registry_addr: str
    trusted_keys_dir: str
    monitor_windows: list[str] = ["count:1000/200"]
    """Drift windows per version: ``count:N[/S]`` (the last N predictions, every S) and ``time:Ts[/Ss]``
    (by the predictions' event time). Evidently's thresholds are noisy on small windows: on the fraud
    features a stable stream crosses a test in 2 % of 500-row windows and 0.5 % of 1,000-row ones."""
    monitor_alert_n: int = 2
    monitor_alert_m: int = 3
    """An alert opens when N of the last M evaluations crossed, and resolves when N of M did not."""
    monitor_repeat_s: float = 300.0
    """While an alert stays open it is raised again this often (0: never), as Alertmanager's repeat
    interval: a retrain that was skipped (cool-down) is tried again."""
    monitor_silences: list[dict[str, str | float]] = []
    """Alertmanager-style silences: ``[{"model": "fraud", "version": "*", "kind": "latency", "until": <epoch s>,
    "reason": "..."}]``; a silenced alert keeps its state and says nothing."""
    monitor_report_every: int = 5
    """Evidently's report is stored for every window that crosses a drift check and for every Nth other
    evaluation of a window (0: only crossing windows)."""
    monitor_label_window: int = 0
    """Performance over the newest N labelled predictions of a version (0: the model spec's window_labels)."""
    monitor_perf_every: int = 100
    """Evaluate performance every this many new labels of a version."""
    monitor_perf_min: int = 100
    """Labelled predictions needed before performance is evaluated."""
    monitor_label_ttl_s: float = 86_400.0
    """A label whose prediction has not arrived after this long goes to the dead letters."""
    monitor_label_sweep_s: float = 30.0
    monitor_quality_limits: tuple[float, float] = (0.05, 0.2)
    """Share of rows with missing, non-finite, out-of-range or unseen values: (warning, critical)."""
    monitor_latency_limits_ms: tuple[float, float] = (100.0, 500.0)
    """p95 latency of a window: (warning, critical)."""
    monitor_error_limits: tuple[float, float] = (0.02, 0.1)
    """Share of failed predictions of a window: (warning, critical)."""

    # ---- LLMs (generations and feedback) ----------------------------------------------------------
    monitor_llm_models: list[str] = []
    """LLMs whose generations (``loopline.generations.<model>``) and feedback it reads; empty: MiniLM is never
    loaded (a fraud-only deployment)."""
    monitor_text_reference: int = 200
    """A version's text reference: its first N generations (stored with their embeddings: a restart rebuilds
    the same one)."""
    monitor_text_windows: list[str] = ["count:200/100"]
    """Count windows over a version's generations after its reference."""
    monitor_text_alpha: float = 0.01
    """Text drift when MMD²'s permutation p-value is below this."""
    monitor_text_permutations: int = 200
    monitor_text_critical_distance: float = 0.1
    """A drifted window whose centroid cosine distance reaches this is critical (else warning)."""
    monitor_length_alpha: float = 0.01
    """Response lengths (completion tokens) moved when the KS p-value against the reference's is below this."""
    monitor_refusal_limits: tuple[float, float] = (0.1, 0.3)
    monitor_guardrail_limits: tuple[float, float] = (0.2, 0.5)
    monitor_latency_per_token_limits_ms: tuple[float, float] = (100.0, 500.0)
    """p95 of latency / completion tokens in a window: (warning, critical)."""
    monitor_llm_budgets: dict[str, dict[str, float | str]] = {}
    """Per model: ``{"tiny-llama": {"window_s": 3600, "limit": 1.0, "currency": "USD"}}``: rolling spend from the
    generations' cost (by their event time)."""
    monitor_budget_warning: float = 0.8
    """Share of a budget at which a warning is raised (critical at the whole budget)."""
    monitor_feedback_ttl_s: float = 86_400.0
    """Feedback whose generation has not arrived after this long goes to the dead letters."""
    monitor_embed_threads: int = 1
    """Torch threads for MiniLM (150 sentences/s on one core here; two cores shared with other services were
    slower)."""
    monitor_embed_batch: int = 64
