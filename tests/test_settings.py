"""Settings: defaults, parsing, and one-line errors that name the variable and the value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from csuite_async_obs import CelerySettings, ConfigError, ObsSettings

from .support import ROOT, base_env


def test_defaults_match_the_documented_table() -> None:
    s = CelerySettings.from_env({})
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.result_backend == "redis://localhost:6379/0"
    assert (s.task_serializer, s.result_serializer, s.accept_content) == ("json", "json", ("json",))
    assert (s.timezone, s.enable_utc, s.task_track_started) == ("UTC", True, True)
    assert (s.task_time_limit, s.task_soft_time_limit) == (300.0, 240.0)
    conf = s.celery_config()
    assert conf["accept_content"] == ["json"] and conf["task_time_limit"] == 300.0


def test_values_are_parsed() -> None:
    s = CelerySettings.from_env(
        {
            "CELERY_BROKER_URL": "redis://10.0.0.1:6380/2",
            "CELERY_ACCEPT_CONTENT": "json, application/x-python-serialize",
            "CELERY_ENABLE_UTC": "no",
            "CELERY_TIMEZONE": "Europe/Berlin",
            "CELERY_TASK_TIME_LIMIT": "60",
            "CELERY_TASK_SOFT_TIME_LIMIT": "45.5",
            "CELERY_IMPORTS": "app.tasks, app.reports",
        }
    )
    assert s.broker_url == "redis://10.0.0.1:6380/2"
    assert s.accept_content == ("json", "application/x-python-serialize")
    assert s.enable_utc is False and s.timezone == "Europe/Berlin"
    assert (s.task_time_limit, s.task_soft_time_limit) == (60.0, 45.5)
    assert s.imports == ("app.tasks", "app.reports")


BAD = [
    (
        {"CELERY_TASK_TIME_LIMIT": "abc"},
        "CELERY_TASK_TIME_LIMIT='abc' is not valid: expected a number of seconds greater than 0",
    ),
    (
        {"CELERY_TASK_TIME_LIMIT": "100", "CELERY_TASK_SOFT_TIME_LIMIT": "100"},
        "CELERY_TASK_SOFT_TIME_LIMIT='100' is not valid: expected a number of seconds below CELERY_TASK_TIME_LIMIT (100)",
    ),
    (
        {"CELERY_TASK_SOFT_TIME_LIMIT": "500"},
        "CELERY_TASK_SOFT_TIME_LIMIT='500' is not valid: expected a number of seconds below CELERY_TASK_TIME_LIMIT (300)",
    ),
    (
        {"CELERY_ENABLE_UTC": "maybe"},
        "CELERY_ENABLE_UTC='maybe' is not valid: expected one of true/false, 1/0, yes/no, on/off",
    ),
    ({"CELERY_TASK_TRACK_STARTED": "2"}, "CELERY_TASK_TRACK_STARTED='2' is not valid"),
    (
        {"CELERY_TASK_SERIALIZER": "xml"},
        "CELERY_TASK_SERIALIZER='xml' is not valid: expected one of json, pickle, yaml, msgpack",
    ),
    ({"CELERY_RESULT_SERIALIZER": "bson"}, "CELERY_RESULT_SERIALIZER='bson' is not valid"),
    (
        {"CELERY_ACCEPT_CONTENT": "json,xml"},
        "CELERY_ACCEPT_CONTENT='json,xml' is not valid: expected a comma-separated list of json",
    ),
    (
        {"CELERY_BROKER_URL": "foo://localhost"},
        "CELERY_BROKER_URL='foo://localhost' is not valid: expected a URL whose scheme is one of",
    ),
    ({"CELERY_BROKER_URL": "localhost:6379"}, "CELERY_BROKER_URL='localhost:6379' is not valid"),
    ({"CELERY_RESULT_BACKEND": "nosuch://x"}, "CELERY_RESULT_BACKEND='nosuch://x' is not valid"),
    (
        {"CELERY_TIMEZONE": "Mars/Olympus"},
        "CELERY_TIMEZONE='Mars/Olympus' is not valid: expected an IANA time zone name",
    ),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[next(iter(e)) for e, _ in BAD])
def test_bad_values_give_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CelerySettings.from_env(env)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_broker_error_lists_accepted_schemes() -> None:
    with pytest.raises(ConfigError) as info:
        CelerySettings.from_env({"CELERY_BROKER_URL": "foo://x"})
    assert info.value.variable == "CELERY_BROKER_URL" and info.value.value == "foo://x"
    for scheme in ("redis", "rediss", "amqp", "memory", "sqs"):
        assert scheme in info.value.accepted.split(", ") or scheme in info.value.accepted


def test_obs_options_three_ways_with_precedence() -> None:
    keywords = {"metrics_port": 1111, "const_labels": {"team": "core"}, "runtime_buckets": [0.1, 1]}
    assert ObsSettings.resolve(keywords, {}).metrics_port == 1111
    assert ObsSettings.resolve(keywords, {}).const_labels == (("team", "core"),)
    assert ObsSettings.resolve(keywords, {}).runtime_buckets == (0.1, 1.0)
    env = {"CSUITE_METRICS_PORT": "2222", "CSUITE_RUNTIME_BUCKETS": "0.5,2"}
    assert ObsSettings.resolve(keywords, env).metrics_port == 2222
    assert ObsSettings.resolve(keywords, env).runtime_buckets == (0.5, 2.0)
    both = ObsSettings.resolve(keywords, env, {"metrics_port": "3333", "runtime_buckets": None})
    assert both.metrics_port == 3333 and both.runtime_buckets == (0.5, 2.0)


OBS_BAD = [
    (
        {"CSUITE_METRICS_PORT": "70000"},
        "CSUITE_METRICS_PORT='70000' is not valid: expected an integer >= 0 and <= 65535",
    ),
    (
        {"CSUITE_RUNTIME_BUCKETS": "1,0.5"},
        "CSUITE_RUNTIME_BUCKETS='1,0.5' is not valid: expected a comma-separated, strictly increasing list",
    ),
    ({"CSUITE_CONST_LABELS": "name=x"}, "CSUITE_CONST_LABELS='name=x' is not valid"),
    ({"CSUITE_CONST_LABELS": "9bad=x"}, "CSUITE_CONST_LABELS='9bad=x' is not valid"),
    (
        {"CSUITE_MAX_TASK_NAMES": "0"},
        "CSUITE_MAX_TASK_NAMES='0' is not valid: expected an integer >= 1",
    ),
    (
        {"CSUITE_LOG_FORMAT": "xml"},
        "CSUITE_LOG_FORMAT='xml' is not valid: expected one of console, json",
    ),
    ({"CSUITE_QUEUE_POLL_INTERVAL": "-1"}, "CSUITE_QUEUE_POLL_INTERVAL='-1' is not valid"),
]


@pytest.mark.parametrize(("env", "message"), OBS_BAD, ids=[next(iter(e)) for e, _ in OBS_BAD])
def test_bad_obs_values_give_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ObsSettings.resolve({}, env)
    assert str(info.value).startswith(message)


def test_bad_keyword_and_flag_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"^instrument\(metrics_port=\.\.\.\)='x' is not valid"):
        ObsSettings.resolve({"metrics_port": "x"}, {})
    with pytest.raises(ConfigError, match=r"^--metrics-port='x' is not valid"):
        ObsSettings.resolve({}, {}, {"metrics_port": "x"})
    with pytest.raises(ConfigError, match=r"^instrument\(nope=\.\.\.\)"):
        ObsSettings.resolve({"nope": 1}, {})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CELERY_TASK_TIME_LIMIT", "abc"),
        ("CELERY_ENABLE_UTC", "maybe"),
        ("CELERY_BROKER_URL", "foo://x"),
        ("CSUITE_METRICS_PORT", "-3"),
    ],
)
def test_worker_start_fails_fast_with_one_line(variable: str, value: str) -> None:
    env = base_env("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", **{variable: value})
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "csuite_async_obs.worker", "worker", "-P", "solo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"csuite-async-obs: {variable}={value!r} is not valid"
    )
    assert "Traceback" not in proc.stderr


def test_bad_worker_flag_fails_fast_with_one_line() -> None:
    env = base_env("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "csuite_async_obs.worker",
            "worker",
            "-P",
            "solo",
            "--metrics-port",
            "nope",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert (
        "--metrics-port='nope' is not valid: expected an integer >= 0 and <= 65535" in proc.stderr
    )


def test_cli_fails_fast_with_one_line() -> None:
    env = base_env("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", CELERY_TASK_TIME_LIMIT="abc")
    proc = subprocess.run(
        [sys.executable, "-m", "csuite_async_obs.cli", "demo", "--duration", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "csuite-async-obs: CELERY_TASK_TIME_LIMIT='abc' is not valid: "
        "expected a number of seconds greater than 0"
    )
