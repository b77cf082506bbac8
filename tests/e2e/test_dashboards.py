"""Every metric a Grafana panel or a Prometheus rule names is exported by a running service.

The static checks (dashboards and rules well formed, each alert with ``for``, a severity, a summary, a
description and a runbook) take no services. The live check starts the eight services once, scrapes
each one's ``/metrics`` (a labelled metric with no samples yet still appears there as a HELP/TYPE
family) and compares; it also checks the probes: ``/healthz`` answers everywhere, ``/readyz`` is 200
once started and never claims a readiness the service lacks.

There is no promtool here: metric names are taken out of PromQL by :func:`metric_names`, which drops
strings, label matchers, ranges, ``by (...)``-style label lists, function calls and keywords.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from loopline_stack.services import ORDER, ServiceSet
from loopline_testing.flow import metric, metrics_port, readyz, wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
RULES = ROOT / "infra" / "prometheus" / "rules" / "loopline.rules.yml"
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"})
"""Series Prometheus writes itself rather than scrapes."""
SEVERITIES = frozenset({"critical", "warning", "info"})

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "inf", "nan", "Inf", "NaN", "start", "end"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_WORD = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, keywords, label names and
    Grafana variables left out)."""
    if "__name__" in expr:
        raise AssertionError(f"selecting by __name__ hides the metric from this check: {expr}")
    s = _VARIABLE.sub(" ", _STRING.sub('""', expr))
    s = _RANGE.sub(" ", _MATCHERS.sub(" ", s))
    s = _LABEL_LIST.sub(" ", s)
    return {m.group(1) for m in _WORD.finditer(s) if not m.group(2) and m.group(1) not in _KEYWORDS}


def variable_metric_names(query: str) -> set[str]:
    """The metrics a Grafana Prometheus variable query reads: ``label_values(metric, label)``,
    ``query_result(expr)``; ``label_values(label)`` and ``metrics(regex)`` read none."""
    query = query.strip()
    if m := re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*\w+\s*\)", query):
        return metric_names(m.group(1))
    if m := re.fullmatch(r"query_result\((.+)\)", query):
        return metric_names(m.group(1))
    if re.fullmatch(r"(label_values\(\s*\w+\s*\)|label_names\(\)|metrics\(.*\))", query):
        return set()
    raise AssertionError(f"a variable query this check does not understand: {query}")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def referenced() -> dict[str, set[str]]:
    """Every metric name a dashboard panel, a dashboard variable or a rule uses -> where."""
    where: dict[str, set[str]] = {}
    for file, board in _dashboards().items():
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    where.setdefault(name, set()).add(f"{file}: {panel['title']}")
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                for name in variable_metric_names(q):
                    where.setdefault(name, set()).add(f"{file}: variable {var['name']}")
    for rule in _rules():
        for name in metric_names(str(rule["expr"])):
            where.setdefault(name, set()).add(f"{RULES.name}: {rule.get('alert') or rule.get('record')}")
    return where


def exported(text: str) -> set[str]:
    """The names a scrape offers to a query: each family's samples, and for a family with no samples
    yet the series names its type will have (a counter ``x`` is queried as ``x_total``, a histogram as
    ``x_bucket``/``x_sum``/``x_count``)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
                "info": ("_info",), "gauge": ("",), "stateset": ("",), "unknown": ("",)}
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# ---- static ---------------------------------------------------------------------------------------

def test_the_extractor_keeps_metrics_and_drops_functions_keywords_labels_and_variables() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(loopline_inference_latency_seconds_bucket'
            '{model=~"$model", code!="OK"}[$__rate_interval] offset 5m))) > 0.25 and on (model) '
            'sum without (job) (deriv(loopline_bus_lag[10m:1m])) / ignoring(x) group_left(y) up == bool 1e3')
    assert metric_names(expr) == {"loopline_inference_latency_seconds_bucket", "loopline_bus_lag", "up"}
    assert metric_names('sum(rate(a_total[5m])) by (job) unless b') == {"a_total", "b"}
    assert variable_metric_names("label_values(loopline_ready, job)") == {"loopline_ready"}
    assert variable_metric_names("label_values(job)") == set()


def test_dashboards_are_provisionable_grafana_json() -> None:
    boards = _dashboards()
    assert len(boards) >= 2, "an overview and per-area dashboards"
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for file, board in boards.items():
        assert board["schemaVersion"] >= 36 and board["title"] and len(board["uid"]) <= 40, file
        ids = [p["id"] for p in _panels(board["panels"])]
        assert len(set(ids)) == len(ids), f"{file}: panel ids repeat"
        for panel in _panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, (file, panel["title"])
            assert panel["targets"], (file, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip() and target["datasource"]["uid"] == "prometheus", (file, panel["title"])
                assert metric_names(target["expr"]), (file, panel["title"], target["expr"])
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (file, panel["title"])
        names = {v["name"] for v in board["templating"]["list"]}
        used = {v for p in _panels(board["panels"]) for t in p.get("targets", []) for v in
                re.findall(r"\$(\w+)", t["expr"]) if not v.startswith("__")}
        assert used <= names, f"{file}: panels use undefined variables {used - names}"


def test_every_rule_has_a_duration_a_severity_and_what_to_do() -> None:
    rules = _rules()
    alerts = [r["alert"] for r in rules if "alert" in r]
    assert len(alerts) == len(set(alerts)) and len(alerts) >= 10
    for rule in rules:
        assert "alert" in rule and str(rule["expr"]).strip(), rule
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"] and notes["runbook"], rule["alert"]
        assert metric_names(str(rule["expr"])), rule["alert"]
        assert str(rule["expr"]).count("(") == str(rule["expr"]).count(")"), rule["alert"]


# ---- live -----------------------------------------------------------------------------------------

def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


async def test_every_metric_a_panel_or_rule_names_is_exported_and_the_probes_answer(
        services: Callable[..., ServiceSet]) -> None:
    svc = services()
    ports = {name: metrics_port(svc.running[name].log) for name in ORDER}

    health = {name: _get(port, "/healthz")[0] for name, port in ports.items()}
    assert health == dict.fromkeys(ORDER, 200)

    # Inference with no model loaded is honestly not ready (it serves nothing yet); every other
    # service is ready once its consumers joined their groups.
    consumers = [n for n in ORDER if n != "inference"]

    async def all_ready() -> bool:
        return all(await asyncio.gather(*[asyncio.to_thread(lambda p=ports[n]: readyz(p) == 200) for n in consumers]))

    assert await wait_until(all_ready, timeout=90, interval=0.5), \
        f"/readyz after start: { {n: readyz(p) for n, p in ports.items()} }"
    loaded = metric(ports["inference"], "loopline_inference_model_loads_total", outcome="loaded")
    assert readyz(ports["inference"]) == (200 if loaded else 503)
    for name in consumers:
        assert metric(ports[name], "loopline_ready") == 1, name
        assert metric(ports[name], "loopline_bus_assigned") >= 1 or name == "registry", name

    offered: set[str] = set()
    for name, port in ports.items():
        status, text = _get(port, "/metrics")
        assert status == 200, name
        offered |= exported(text)
    offered |= PROMETHEUS_OWN
    wanted = referenced()
    missing = {name: sorted(where) for name, where in wanted.items() if name not in offered}
    assert not missing, f"referenced by a dashboard or rule, exported by no service: {missing}"
