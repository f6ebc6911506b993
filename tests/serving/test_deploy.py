"""The deployment files stay in step with the code: the dashboard's metrics exist, the image holds every package."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from serving.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_every_dashboard_metric_is_exported() -> None:
    exported = {m.name for m in ServiceMetrics().registry.collect()}  # histograms/counters by base name
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(bucket|sum|count|total)$", "", name) for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"siftrank_\w+", target["expr"])}
    assert used and used <= {re.sub(r"_total$", "", name) for name in exported}, used - exported


def test_the_image_copies_every_package_and_serves_on_its_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert f"COPY {package} {package}" in dockerfile
    assert "EXPOSE 8000" in dockerfile and "/readyz" in dockerfile and "ARG TORCH=2.13.0+cpu" in dockerfile
    # every path the service reads or writes is an env var the commands honour (docs/cli.md), none under /app
    for variable in ("SIFTRANK_DATA=/data", "SIFTRANK_CACHE=/cache", "SIFTRANK_EVENT_LOG=/var/lib/siftrank/events.db"):
        assert variable in dockerfile
    assert dockerfile.split("ARG EXTRAS=")[1].split("\n")[0] == "cpu"  # lean: no test tools, Ray or OpenVINO


def test_compose_mounts_the_files_in_deploy() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"siftrank", "prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # a file of the repository, relative to deploy/
                assert (ROOT / "deploy" / source).is_file(), volume
    targets = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["siftrank:8000"]  # the compose service name and port
