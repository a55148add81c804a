"""Telestion's testbed contract (TESTBED.spec) for scripts/testbed.py, against real servers.

Every case runs the script in a subprocess with a controlled environment (the test process's
environment minus any Telestion configuration) and parses the JSON object on its last stdout
line. The script must always exit 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from telestion_sync.server import NatsServer, free_port

from .conftest import clean_env

pytestmark = pytest.mark.timeout(30)

TESTBED = Path(__file__).resolve().parent.parent / "scripts" / "testbed.py"


@pytest.fixture
def testbed(tmp_path: Path):
    """Run the testbed with extra environment and CLI arguments (cwd: a temporary folder);
    return its result object (with ``_stdout_lines`` added for the stdout checks)."""

    def run(*args: str, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, str(TESTBED), *args],
            env={**clean_env(), **(env or {})},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )
        report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.returncode == 0, report
        lines = proc.stdout.splitlines()
        assert lines, report
        result = json.loads(lines[-1])
        assert isinstance(result, dict), report
        for key in ("started", "nats_api_available", "nats_connected"):
            assert isinstance(result[key], bool), report
        assert isinstance(result["env"], dict)
        assert all(isinstance(v, str) for v in result["env"].values())
        if result["started"]:
            assert "error" not in result, report
            assert all(isinstance(v, str) for v in result["config"].values()), report
        else:
            assert "config" not in result, report
            assert isinstance(result["error"], str) and result["error"], report
        result["_stdout_lines"] = lines
        return result

    return run


@pytest.fixture
def required(tmp_path: Path) -> Dict[str, str]:
    """The required keys, without NATS (X_DISABLE_NATS=1)."""
    return {
        "NATS_URL": "localhost:4222",
        "SERVICE_NAME": "testbed",
        "DATA_DIR": str(tmp_path / "data"),
        "X_DISABLE_NATS": "1",
    }


# --- where the configuration comes from ------------------------------------------------------


def test_config_from_env_without_nats(testbed, required) -> None:
    result = testbed(env={**required, "TEST": "1"})
    assert result["started"] is True
    assert result["nats_api_available"] is False
    assert result["nats_connected"] is False
    assert result["config"]["TEST"] == "1"
    assert result["config"]["SERVICE_NAME"] == "testbed"
    assert result["env"]["TEST"] == "1"
    assert result["env"]["X_DISABLE_NATS"] == "1"
    assert result["_stdout_lines"] == [result["_stdout_lines"][-1]]  # nothing else on stdout


def test_config_from_cli_argument(testbed, required) -> None:
    result = testbed("--TEST=1", env=required)
    assert result["started"] is True
    assert result["config"]["TEST"] == "1"
    assert "TEST" not in result["env"]


def test_cli_beats_env(testbed, required) -> None:
    result = testbed("--TEST=cli", "--SERVICE_NAME=from-cli", env={**required, "TEST": "env"})
    assert result["config"]["TEST"] == "cli"
    assert result["config"]["SERVICE_NAME"] == "from-cli"
    assert result["env"]["TEST"] == "env"


def test_key_value_as_two_arguments_and_bare_flags(testbed, required) -> None:
    result = testbed("--TEST", "value", "--FLAG", "--OTHER=x", "stray-word", env=required)
    assert result["started"] is True
    assert result["config"]["TEST"] == "value"
    assert result["config"]["FLAG"] == "true"
    assert result["config"]["OTHER"] == "x"
    assert "stray-word" not in result["config"]


def test_missing_config_fails_naming_the_keys_and_dev(testbed) -> None:
    result = testbed(env={"X_DISABLE_NATS": "1"})
    assert result["started"] is False
    assert result["nats_api_available"] is False
    assert result["nats_connected"] is False
    for key in ("NATS_URL", "SERVICE_NAME", "DATA_DIR"):
        assert key in result["error"]
    assert "--dev" in result["error"]

    partial = testbed("--SERVICE_NAME=x", env={"X_DISABLE_NATS": "1", "NATS_URL": "localhost:4222"})
    assert partial["started"] is False
    assert "DATA_DIR" in partial["error"]
    assert "NATS_URL" not in partial["error"] and "SERVICE_NAME" not in partial["error"]


def test_missing_config_fails_with_nats_enabled_too(testbed) -> None:
    result = testbed()
    assert result["started"] is False
    assert "NATS_URL" in result["error"] and "--dev" in result["error"]


def test_dev_defaults(testbed, tmp_path: Path) -> None:
    result = testbed("--dev", env={"X_DISABLE_NATS": "1"})
    assert result["started"] is True
    config = result["config"]
    assert config["NATS_URL"] == "localhost:4222"
    assert "NATS_USER" not in config
    assert "NATS_PASSWORD" not in config
    assert config["SERVICE_NAME"].startswith("dev-")
    assert config["DATA_DIR"] == "./data"
    assert (tmp_path / "data").is_dir()  # created, relative to the working directory


def test_custom_values_beat_dev_defaults_while_connecting(
    testbed, server: NatsServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "custom-data"
    result = testbed("--dev", f"--DATA_DIR={data_dir}", env={"NATS_URL": f"localhost:{server.port}"})
    assert result["started"] is True, result.get("error")
    assert result["nats_api_available"] is True
    assert result["nats_connected"] is True
    assert result["config"]["DATA_DIR"] == str(data_dir)
    assert result["config"]["NATS_URL"] == f"localhost:{server.port}"  # host localhost, not a scheme
    assert result["config"]["SERVICE_NAME"].startswith("dev-")
    assert data_dir.is_dir()
    assert not (tmp_path / "data").exists()


# --- NATS: connecting, credentials, offline servers, disabled --------------------------------


def test_nats_connected_with_a_full_url(testbed, server: NatsServer, tmp_path: Path) -> None:
    result = testbed(
        f"--NATS_URL={server.url}",
        "--SERVICE_NAME=bed",
        f"--DATA_DIR={tmp_path}",
        env={"X_DISABLE_NATS": "0"},
    )
    assert result["started"] is True, result.get("error")
    assert result["nats_api_available"] is True
    assert result["nats_connected"] is True
    assert result["_stdout_lines"] == [result["_stdout_lines"][-1]]


def test_auth_server_accepts_the_right_password(testbed, auth_server: NatsServer, tmp_path: Path) -> None:
    result = testbed(
        "--dev",
        f"--DATA_DIR={tmp_path}",
        env={"NATS_URL": auth_server.url, "NATS_USER": "alice", "NATS_PASSWORD": "s3cret"},
    )
    assert result["started"] is True, result.get("error")
    assert result["nats_connected"] is True
    assert result["config"]["NATS_USER"] == "alice"
    assert result["config"]["NATS_PASSWORD"] == "s3cret"

    from_cli = testbed(
        "--dev", f"--NATS_URL={auth_server.url}", "--NATS_USER=alice", "--NATS_PASSWORD=s3cret"
    )
    assert from_cli["nats_connected"] is True, from_cli.get("error")


def test_auth_server_refuses_a_wrong_password(testbed, auth_server: NatsServer) -> None:
    start = time.monotonic()
    result = testbed(
        "--dev", env={"NATS_URL": auth_server.url, "NATS_USER": "alice", "NATS_PASSWORD": "wrong-pw"}
    )
    assert time.monotonic() - start < 10
    assert result["started"] is False
    assert result["nats_connected"] is False
    assert result["nats_api_available"] is False
    assert "AuthenticationError" in result["error"]
    assert "wrong-pw" not in result["error"]  # secrets stay out of error messages


def test_auth_server_refuses_missing_credentials(testbed, auth_server: NatsServer) -> None:
    result = testbed("--dev", f"--NATS_URL={auth_server.url}")
    assert result["started"] is False
    assert "AuthenticationError" in result["error"]

    no_password = testbed("--dev", f"--NATS_URL={auth_server.url}", "--NATS_USER=alice")
    assert no_password["started"] is False
    assert "AuthenticationError" in no_password["error"]


def test_offline_server_fails_start_up_quickly(testbed) -> None:
    port = free_port()
    start = time.monotonic()
    result = testbed("--dev", env={"NATS_URL": f"localhost:{port}"})
    assert time.monotonic() - start < 8  # no endless retrying
    assert result["started"] is False
    assert result["nats_connected"] is False
    assert str(port) in result["error"]


def test_stopped_server_fails_start_up(testbed) -> None:
    srv = NatsServer()
    srv.start()
    srv.stop()
    result = testbed("--dev", f"--NATS_URL={srv.url}")
    assert result["started"] is False
    assert "NoServersError" in result["error"]


def test_nats_disabled_starts_without_connecting(testbed) -> None:
    offline = f"nats://127.0.0.1:{free_port()}"  # never contacted
    result = testbed("--dev", env={"X_DISABLE_NATS": "1", "NATS_URL": offline})
    assert result["started"] is True
    assert result["nats_api_available"] is False
    assert result["nats_connected"] is False
    assert result["config"]["NATS_URL"] == offline


def test_only_x_disable_nats_1_disables_nats(testbed, server: NatsServer) -> None:
    for value in ("0", "", "true"):
        result = testbed("--dev", f"--NATS_URL={server.url}", env={"X_DISABLE_NATS": value})
        assert result["nats_api_available"] is True, value
        assert result["nats_connected"] is True, value


# --- CONFIG_FILE ------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_config_file(testbed, required, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "config.json",
        {"FROM_FILE": "yes", "NUMBER": 3, "OBJECT": {"a": [1, 2]}, "FLAG": True, "UNSET": None},
    )
    result = testbed(env={**required, "CONFIG_FILE": path})
    assert result["started"] is True, result.get("error")
    config = result["config"]
    assert config["FROM_FILE"] == "yes"
    assert config["NUMBER"] == "3"  # non-string values are JSON-encoded
    assert json.loads(config["OBJECT"]) == {"a": [1, 2]}
    assert config["FLAG"] == "true"
    assert "UNSET" not in config  # unset keys are absent
    assert config["CONFIG_FILE"] == path


def test_config_file_supplies_the_required_keys(testbed, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "config.json",
        {"NATS_URL": "localhost:4222", "SERVICE_NAME": "from-file", "DATA_DIR": str(tmp_path / "d")},
    )
    result = testbed(f"--CONFIG_FILE={path}", env={"X_DISABLE_NATS": "1"})
    assert result["started"] is True, result.get("error")
    assert result["config"]["SERVICE_NAME"] == "from-file"


def test_config_file_with_config_key(testbed, required, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "config.json",
        {"publisher": {"DATA_SUBJECT": "data.pub", "FREQUENCY": 2}, "cache": {"DATA_SUBJECT": "data.>"}},
    )
    result = testbed("--CONFIG_KEY=publisher", env={**required, "CONFIG_FILE": path})
    assert result["started"] is True, result.get("error")
    config = result["config"]
    assert config["DATA_SUBJECT"] == "data.pub"
    assert config["FREQUENCY"] == "2"
    assert "publisher" not in config and "cache" not in config
    assert config["CONFIG_KEY"] == "publisher"


def test_precedence_dev_then_file_then_env_then_cli(testbed, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "config.json",
        {"A": "file", "B": "file", "C": "file", "SERVICE_NAME": "file-name"},
    )
    result = testbed(
        "--dev",
        "--C=cli",
        env={"X_DISABLE_NATS": "1", "CONFIG_FILE": path, "B": "env", "C": "env"},
    )
    assert result["started"] is True, result.get("error")
    config = result["config"]
    assert (config["A"], config["B"], config["C"]) == ("file", "env", "cli")
    assert config["SERVICE_NAME"] == "file-name"  # the file beats --dev defaults
    assert config["NATS_URL"] == "localhost:4222"


@pytest.mark.parametrize(
    "content, words",
    [(None, "does not exist"), ("{not json", "JSON"), ('["a", "list"]', "object")],
    ids=["missing", "not-json", "not-an-object"],
)
def test_config_file_that_is_not_a_json_object_fails_naming_it(
    testbed, required, tmp_path: Path, content: Optional[str], words: str
) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    result = testbed(env={**required, "CONFIG_FILE": str(path)})
    assert result["started"] is False
    assert str(path) in result["error"]
    assert words in result["error"]


def test_config_file_without_an_object_under_the_key(testbed, required, tmp_path: Path) -> None:
    path = write_json(tmp_path / "config.json", {"present": {"A": "1"}, "scalar": 5})
    for key in ("absent", "scalar"):
        result = testbed(f"--CONFIG_KEY={key}", env={**required, "CONFIG_FILE": path})
        assert result["started"] is False, key
        assert path in result["error"]
        assert key in result["error"]
