"""Real servers for the archive and metrics tests, each in its own directory on 127.0.0.1.

* `InfluxServer`: Debian's influxd 1.6.7 (InfluxQL on /query, v1 writes on /write);
* `InfluxV2Adapter`: an aiohttp front that maps `/api/v2/write?bucket=db/rp` to
  `/write?db=db&rp=rp`, as InfluxDB 1.8+ does natively; it can also answer with a chosen
  status (5xx, 429) to test the writer's classification, and it records what it received;
* `VictoriaMetrics`: serves `/api/v2/write` itself; read back with /api/v1/export;
* `Prometheus`: scrapes given targets with given rule files.

Every process runs under `timeout`, so even a killed test run leaves nothing behind for long,
and is stopped by PID in the fixtures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import ClientSession, ClientTimeout, web

LOCALHOST = "127.0.0.1"
PROCESS_LIFETIME_S = 600  # `timeout` kills a server that outlives a hung test run


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    params: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not ready within {timeout_s} s")


class ServerProcess:
    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                ["timeout", str(PROCESS_LIFETIME_S), *self.args],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()  # `timeout` forwards SIGTERM to the server
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class InfluxServer:
    """influxd 1.6.7 with its data, meta and WAL under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.rpc_port = free_port()
        conf = workdir / "influxdb.conf"
        conf.write_text(
            "reporting-enabled = false\n"
            f'bind-address = "{LOCALHOST}:{self.rpc_port}"\n'
            "[meta]\n"
            f'  dir = "{workdir}/meta"\n'
            "[data]\n"
            f'  dir = "{workdir}/data"\n'
            f'  wal-dir = "{workdir}/wal"\n'
            "  query-log-enabled = false\n"
            "[http]\n"
            f'  bind-address = "{LOCALHOST}:{self.port}"\n'
            "  log-enabled = false\n"
            "[monitor]\n"
            "  store-enabled = false\n"
        )
        self.process = ServerProcess("influxd", ["influxd", "-config", str(conf)], workdir)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: http("GET", f"{self.url}/ping")[0] == 204, 15, "influxd")

    def stop(self) -> None:
        self.process.stop()

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """InfluxQL; the `results` list of the answer, with epoch milliseconds."""
        params = {"q": q, "epoch": "ms"}
        if db is not None:
            params["db"] = db
        status, body = http("POST", f"{self.url}/query", params=params)
        if status != 200:
            raise AssertionError(f"InfluxQL {q!r}: HTTP {status}: {body!r}")
        results: list[dict[str, Any]] = json.loads(body)["results"]
        for result in results:
            if "error" in result:
                raise AssertionError(f"InfluxQL {q!r}: {result['error']}")
        return results

    def series(self, q: str, db: str) -> list[dict[str, Any]]:
        return [s for r in self.query(q, db) for s in r.get("series", [])]

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')


@dataclass
class AdapterLog:
    requests: int = 0
    gzip_requests: int = 0
    answered: dict[int, int] = field(default_factory=dict)


class InfluxV2Adapter:
    """`/api/v2/write` in front of an InfluxDB 1.x, as 1.8+ serves it natively."""

    PRECISIONS: ClassVar[dict[str, str]] = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}

    def __init__(self, backend_url: str, port: int | None = None) -> None:
        self.backend_url = backend_url
        self.port = port or free_port()
        self.log = AdapterLog()
        self.fail_with: int | None = None  # answer this status instead of forwarding
        self.fail_times = 0  # ... this many times (0: until cleared)
        self.retry_after: str | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        self._session = ClientSession(timeout=ClientTimeout(total=10))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # reuse_address: a restarted adapter takes the same port, as a restarted server would.
        site = web.TCPSite(self._runner, LOCALHOST, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _write(self, request: web.Request) -> web.Response:
        self.log.requests += 1
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            self.log.gzip_requests += 1
        if self.fail_with is not None:
            status = self.fail_with
            if self.fail_times:
                self.fail_times -= 1
                if self.fail_times == 0:
                    self.fail_with = None
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return self._answer(status, "injected failure", headers)
        bucket = request.query.get("bucket", "")
        db, _, rp = bucket.partition("/")
        params = {
            "db": db,
            "precision": self.PRECISIONS.get(request.query.get("precision", "ns"), "n"),
        }
        if rp:
            params["rp"] = rp
        # aiohttp has already undone the gzip encoding (a bad one is answered 400 by it).
        body = await request.read()
        assert self._session is not None
        async with self._session.post(
            f"{self.backend_url}/write", params=params, data=body
        ) as answer:
            text = await answer.text()
        if answer.status == 204:
            return self._answer(204, "", {})
        try:
            message = json.loads(text).get("error", text)
        except ValueError:
            message = text
        return self._answer(answer.status, message, {})

    def _answer(self, status: int, message: str, headers: dict[str, str]) -> web.Response:
        self.log.answered[status] = self.log.answered.get(status, 0) + 1
        if status == 204:
            return web.Response(status=204, headers=headers)
        code = "invalid" if status < 500 else "internal error"
        return web.json_response({"code": code, "message": message}, status=status, headers=headers)


class VictoriaMetrics:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = ServerProcess(
            "victoria-metrics",
            [
                "victoria-metrics",
                f"-httpListenAddr={LOCALHOST}:{self.port}",
                f"-storageDataPath={workdir}/data",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
            ],
            workdir,
        )

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: http("GET", f"{self.url}/health")[0] == 200, 15, "victoria-metrics")

    def stop(self) -> None:
        self.process.stop()

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching, after flushing VictoriaMetrics' in-memory buffers."""
        http("GET", f"{self.url}/internal/force_flush")
        status, body = http("POST", f"{self.url}/api/v1/export", params={"match[]": match})
        if status != 200:
            raise AssertionError(f"export {match}: HTTP {status}: {body!r}")
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML: no quoting surprises
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": [
                        {"job_name": "appliance", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.process = ServerProcess(
            "prometheus",
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir}/data",
                f"--web.listen-address={LOCALHOST}:{self.port}",
            ],
            workdir,
        )

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: http("GET", f"{self.url}/-/ready")[0] == 200, 20, "prometheus")

    def stop(self) -> None:
        self.process.stop()

    def api(self, path: str, **params: str) -> Any:
        status, body = http("GET", f"{self.url}/api/v1/{path}", params=params)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: HTTP {status}: {answer}")
        return answer["data"]

    def targets_up(self) -> bool:
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result
