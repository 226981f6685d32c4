"""deploy/grafana: the dashboard's every query names metrics a real server exports (with the
right type for how the query uses them) and runs on a real Prometheus scraping that server; the
provisioning files and the compose service point at each other; promtool accepts
deploy/prometheus.yml. (Docker itself is not run here.)"""
import json
import re
import shutil
import subprocess

import pytest
import yaml

from server_harness import REPO, PrometheusProcess, request, stream_text, wait_for

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "spanserve.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def dashboard():
    return json.loads(DASHBOARD.read_text())


def expressions():
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def metric_names(expr):
    """The spanserve_* identifiers of a PromQL expression, and those read through rate()."""
    names = set(re.findall(r"\bspanserve_[A-Za-z0-9_:]*", expr))
    in_rate = set(re.findall(r"\brate\(\s*(spanserve_[A-Za-z0-9_:]*)", expr))
    return names, in_rate


@pytest.fixture(scope="module")
def scrape(server):
    """The module server's /metrics after a couple of generations, one per span mode."""
    stub = server.stub()
    stub.Generate(request(max_tokens=12, ignore_eos=True, span_mode=1), timeout=60)
    stream_text(stub, request(max_tokens=12, ignore_eos=True, span_mode=2))
    wait_for(lambda: server.metric("spanserve_generated_tokens_total") >= 24, 5,
             what="the generations to be counted")
    return server.scrape()


def test_the_dashboard_is_complete_json():
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] and board["title"] and len(panels) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("first token", "inter-token", "tokens/s", "running", "waiting", "kv cache",
                   "preemptions", "attention saving", "header fallbacks", "by rpc and code"):
        assert wanted in titles, wanted


def test_every_query_names_a_metric_the_server_exports(scrape):
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M))
    samples = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", scrape, re.M))
    seen = set()
    for expr in expressions():
        names, in_rate = metric_names(expr)
        assert names, expr
        for name in names:
            assert name in samples, f"{name} (in {expr}) is not in the scrape"
            base = next((name[:-len(s)] for s in HISTOGRAM_PARTS
                         if name.endswith(s) and types.get(name[:-len(s)]) == "histogram"), None)
            kind = "histogram part" if base else types.get(name)
            # rate() of counters and histogram parts only; anything else is read as a gauge.
            allowed = ("counter", "histogram part") if name in in_rate else ("gauge",)
            assert kind in allowed, f"{name} is a {kind}, used in {expr}"
            seen.add(base or name)
    # The dashboard shows every metric the issue names (batch size and step time aside).
    for name in ("spanserve_time_to_first_token_seconds", "spanserve_inter_token_latency_seconds",
                 "spanserve_generated_tokens_total", "spanserve_requests_total",
                 "spanserve_requests_running", "spanserve_requests_waiting",
                 "spanserve_kv_blocks_used", "spanserve_kv_blocks_capacity",
                 "spanserve_preemptions_total", "spanserve_kv_blocks_read_total",
                 "spanserve_kv_blocks_dense_total", "spanserve_span_header_fallbacks_total"):
        assert name in seen, name


def test_the_name_check_can_fail():
    names, in_rate = metric_names(
        "histogram_quantile(0.9, sum by (le) (rate(spanserve_ttft_bucket[5m]))) / "
        "spanserve_requests_running")
    assert names == {"spanserve_ttft_bucket", "spanserve_requests_running"}
    assert in_rate == {"spanserve_ttft_bucket"}


def test_every_query_runs_on_prometheus(server, scrape, tmp_path):
    """A real Prometheus scrapes the server each second; every panel expression, with Grafana's
    $__rate_interval as 15s, must parse and return series."""
    prometheus = PrometheusProcess(tmp_path, server.metrics_port)
    try:
        def scrapes_held():
            body = prometheus.query("count_over_time(spanserve_generated_tokens_total[15s])")
            result = (body or {}).get("data", {}).get("result", [])
            return result and float(result[0]["value"][1]) >= 3

        # rate() needs two samples of each series in its window.
        wait_for(scrapes_held, 60, interval=0.5, what="Prometheus to hold three scrapes")
        server.stub().Generate(request(max_tokens=8), timeout=60)
        for expr in expressions():
            body = prometheus.query(expr.replace("$__rate_interval", "15s"))
            assert body and body["status"] == "success", (expr, body)
            assert body["data"]["result"], f"no series for {expr}"
    finally:
        prometheus.close()


def test_provisioning_and_compose_point_at_each_other():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]
    assert grafana["image"].startswith("grafana/grafana-oss")
    assert "prometheus" in grafana["depends_on"] and "3000:3000" in grafana["ports"]
    mounts = {}
    for volume in grafana["volumes"]:
        host, container = volume.split(":")[:2]
        mounts[container] = (DEPLOY / host).resolve()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING.resolve()

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "spanserve.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts[path] == DASHBOARD.parent.resolve()  # the provider reads the mounted folder

    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus"
    listen = next(a for a in compose["prometheus"]["command"] if "--web.listen-address" in a)
    assert source["url"] == "http://prometheus:" + listen.rsplit(":", 1)[1]
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    uids |= {p["datasource"]["uid"] for p in dashboard()["panels"]}
    assert uids == {source["uid"]}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
