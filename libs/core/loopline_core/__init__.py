"""Loopline's shared kernel: settings, logging, telemetry, errors, Kafka bus, db, object store, signing.

Nothing here knows any service's logic; services compose these pieces in their own ``main.py``.
"""
