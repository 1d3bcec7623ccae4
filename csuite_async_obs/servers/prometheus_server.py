"""A private Prometheus server on a free loopback port, for the demo and for tests.

:class:`PrometheusServer` writes a configuration (scrape targets, rule files, a
short scrape and evaluation interval) into a temporary folder, starts the
system's ``prometheus`` binary on ``127.0.0.1`` only, with its data in that
folder, and waits until it is ready; :meth:`~PrometheusServer.stop` ends it
and removes the folder.  Queries go through the HTTP API with the standard
library, so this module adds no dependency.

The configuration is written as JSON, which is YAML too: no YAML library is
needed at run time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .processes import ProcessError, free_port, stop_process, wait_until_ready

__all__ = [
    "PrometheusError",
    "PrometheusServer",
    "find_prometheus",
]

DEFAULT_JOB = "csuite-async-obs"


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or refused a request (its error text included)."""


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` binary on the PATH, or ``None``."""
    return shutil.which("prometheus")


def _duration(seconds: float) -> str:
    """Prometheus duration text for a number of seconds (milliseconds kept)."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


class PrometheusServer:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager).

    Args:
        targets: ``host:port`` addresses scraped under the job ``job``; or a
            mapping of job name to addresses for several jobs.
        rule_files: rule files to load (copied into the server's folder).
        scrape_interval: seconds between scrapes (the scrape timeout is the same).
        evaluation_interval: seconds between rule evaluations.
        job: job name for ``targets`` given as a plain list.
        labels: target labels by job name, added to every target of that job (a
            ``cluster`` label, say, as a deployment's service discovery or
            relabelling would set it).
        port: port to listen on (127.0.0.1 only); a free one by default.
        binary: the ``prometheus`` executable; found on the PATH by default.
    """

    def __init__(
        self,
        targets: Sequence[str] | Mapping[str, Sequence[str]] = (),
        rule_files: Sequence[str | os.PathLike[str]] = (),
        *,
        scrape_interval: float = 1.0,
        evaluation_interval: float = 1.0,
        job: str = DEFAULT_JOB,
        labels: Mapping[str, Mapping[str, str]] | None = None,
        port: int | None = None,
        binary: str | None = None,
        features: Sequence[str] = (),
    ) -> None:
        if isinstance(targets, Mapping):
            self.jobs = {name: list(addresses) for name, addresses in targets.items()}
        else:
            self.jobs = {job: list(targets)}
        self.labels = {name: dict(values) for name, values in (labels or {}).items()}
        unknown = set(self.labels) - set(self.jobs)
        if unknown:
            raise ValueError(f"labels for jobs that have no targets: {sorted(unknown)}")
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.port = port or free_port()
        self.binary = binary or find_prometheus()
        #: ``--enable-feature`` values (``native-histograms``: Prometheus asks for the
        #: protobuf exposition and keeps native histograms).
        self.features = tuple(features)
        self.process: subprocess.Popen[bytes] | None = None
        self.process_status: int | None = None
        self.directory: Path | None = None

    # ------------------------------------------------------------------ life

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, rule_paths: Sequence[Path]) -> dict[str, Any]:
        """The configuration file's content."""
        interval = _duration(self.scrape_interval)
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": _duration(self.evaluation_interval),
            },
            "rule_files": [str(p) for p in rule_paths],
            "scrape_configs": [
                {
                    "job_name": name,
                    "static_configs": [
                        {"targets": addresses, **({"labels": labels} if labels else {})}
                    ],
                }
                for name, addresses in self.jobs.items()
                for labels in [self.labels.get(name)]
            ],
        }

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        """Write the configuration, start the server, wait until ``/-/ready`` answers 200.

        Raises:
            PrometheusError: no binary, the server exited, or it was not ready in time
                (the message ends with the tail of its log).
        """
        if self.binary is None:
            raise PrometheusError(
                "no `prometheus` binary on the PATH (Debian: apt-get install prometheus)"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="csuite-prometheus-"))
        rules = []
        for index, source in enumerate(self.rule_files):
            copy = self.directory / f"{index:02d}-{source.name}"
            shutil.copyfile(source, copy)
            rules.append(copy)
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps(self.config(rules), indent=2))
        self._log = open(self.directory / "prometheus.log", "wb")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
                *(f"--enable-feature={feature}" for feature in self.features),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(
                self.process,
                self._ready,
                timeout=timeout,
                what=f"prometheus on {self.url}",
                interval=0.1,
                log=self.log,
            )
        except ProcessError as exc:
            self.stop()
            raise PrometheusError(str(exc)) from None
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def log(self) -> str:
        """The server's own log so far."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its folder."""
        process = self.process
        if process is not None:
            self.process_status = stop_process(process, signal.SIGTERM, group=False)
            self._log.close()
        self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]] = (),
            timeout: float = 10.0) -> Any:  # fmt: skip
        """GET ``/api/v1/<path>`` and return its ``data``.

        Raises:
            PrometheusError: the API answered with an error (its type and text).
        """
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            if not body:
                raise PrometheusError(f"{url}: HTTP {exc.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now (or at Unix time ``at``); the result's samples.

        A scalar or string result comes back as one sample without labels.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Evaluate ``expr`` over ``[start, end]`` every ``step`` seconds; the result's series."""
        params = {
            "query": expr,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": _duration(step),
        }
        return list(self.api("query_range", params)["result"])

    def value(self, expr: str) -> float | None:
        """The value of a query that returns one sample, or ``None`` when it returns none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} samples, expected one")
        number = float(result[0]["value"][1])
        return None if math.isnan(number) else number

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of ``label`` on the series ``match`` selects (Grafana's ``label_values``)."""
        return list(self.api(f"label/{urllib.parse.quote(label)}/values", [("match[]", match)]))

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as ``/api/v1/alerts`` lists them."""
        return list(self.api("alerts")["alerts"])

    def firing(self) -> list[dict[str, Any]]:
        """Alerts in the firing state."""
        return [a for a in self.alerts() if a.get("state") == "firing"]

    def rules(self) -> list[dict[str, Any]]:
        """Rule groups with each rule's health, last error and evaluation time."""
        return list(self.api("rules")["groups"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health."""
        return list(self.api("targets")["activeTargets"])

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully.

        Raises:
            PrometheusError: not all targets were up by the deadline.
        """
        expected = sum(len(addresses) for addresses in self.jobs.values())
        deadline = time.monotonic() + timeout
        up: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            up = [t for t in self.targets() if t.get("health") == "up"]
            if len(up) == expected:
                return
            time.sleep(0.2)
        raise PrometheusError(
            f"{len(up)} of {expected} targets up after {timeout}s: {self.targets()}"
        )
