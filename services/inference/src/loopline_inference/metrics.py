from prometheus_client import Counter, Histogram

REQUESTS = Counter("loopline_inference_requests_total", "ModelInfer calls", ["model", "code"])
LATENCY = Histogram("loopline_inference_latency_seconds", "ModelInfer latency", ["model"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
LOADS = Counter("loopline_inference_model_loads_total", "Model load attempts", ["model", "outcome"])
