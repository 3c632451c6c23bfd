from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forecaster.config import Config, find_config, load_config, parse_config, with_source
from forecaster.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_equals_builtin_defaults() -> None:
    assert load_config(ROOT / "config.toml") == Config()


def test_every_default_key_is_documented_in_example() -> None:
    text = (ROOT / "config.toml").read_text()
    for section, model in Config.model_fields.items():
        assert section in text, section
        annotation = model.annotation
        fields = getattr(annotation, "model_fields", None)
        if fields:
            for key in fields:
                # a key whose default is "unset" is shown commented out
                assert f"\n{key} = " in text or f"\n# {key} = " in text, (
                    f"{section}.{key} missing from config.toml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"capture": {"sise": [64, 64]}}, "capture.sise: unknown key"),
        ({"publish": {"sndhwm": "10"}}, "publish.sndhwm: Input should be a valid integer (got '10')"),
        ({"capture": {"size": [64, 70]}}, "capture.size"),
        ({"cameras": [{"id": "a b"}]}, "cameras.0.id"),
        ({"cameras": [{"id": "cam\n"}]}, "cameras.0.id"),
        ({"cameras": [{"id": "c" * 65}]}, "camera id must be 1-64 characters"),
        ({"cameras": [{"id": "a"}, {"id": "a"}]}, "repeated: a"),
        ({"scorer": {"threshold_on": 1.0, "threshold_off": 2.0}}, "threshold_off (2.0)"),
        ({"publish": {"endpoint": "udp://x"}}, "publish.endpoint"),
        ({"cameras": [{"fps": -1}]}, "cameras.0.fps"),
        ({"publish": {"endpoint": "tcp://127.0.0.1:70000"}}, "port must be a number from 1 to 65535"),
        ({"publish": {"endpoint": "tcp://127.0.0.1:0"}}, "needs a fixed port"),
        ({"publish": {"endpoint": "tcp://127.0.0.1:*"}}, "needs a fixed port"),
        ({"publish": {"endpoint": "tcp://127.0.0.1"}}, "needs a host and a port"),
        ({"publish": {"endpoint": "tcp://"}}, "needs a host and a port"),
        ({"publish": {"endpoint": "tcp://:5556"}}, "needs a host and a port"),
        ({"publish": {"endpoint": "tcp://127.0.0.1:5556 "}}, "must not contain spaces"),
        ({"publish": {"endpoint": "tcp://::1:5556"}}, "goes in brackets"),
        ({"publish": {"endpoint": "tcp://[::1]5556"}}, "tcp://[ADDRESS]:PORT"),
        ({"publish": {"endpoint": "ipc://"}}, "needs a socket path"),
        ({"publish": {"endpoint": "ipc:///run/" + "x" * 110}},
         "publish.endpoint: ipc socket path is 115 bytes long; a Unix socket's path holds at "
         "most 107"),
        ({"publish": {"sndhwm": 2**31}}, "publish.sndhwm"),
        ({"publish": {"linger_ms": 2**31}}, "publish.linger_ms"),
        ({"scorer": {"threshold_on": float("nan")}}, "scorer.threshold_on: Input should be a finite"),
        ({"cameras": [{"fps": float("inf")}]}, "cameras.0.fps: Input should be a finite"),
        ({"worker": {"throttle_ms": 1e300}}, "worker.throttle_ms"),
        ({"worker": {"startup_timeout_s": float("inf")}}, "worker.startup_timeout_s"),
        ({"service": {"stall_timeout_s": 1e300}}, "service.stall_timeout_s"),
        ({"scorer": {"merge_gap_s": -1}}, "scorer.merge_gap_s: Input should be greater than or equal to 0"),
        ({"scorer": {"merge_gap_s": "3s"}}, "scorer.merge_gap_s"),
    ],
)
def test_bad_values_name_the_key_and_value(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, origin="x.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("x.toml: ")


def test_ints_accepted_for_floats() -> None:
    config = parse_config({"cameras": [{"fps": 5}], "scorer": {"threshold_on": 4}})
    assert config.cameras[0].fps == 5.0
    assert config.scorer.threshold_on == 4.0


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[capture\nsize = 3")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_lookup_prefers_explicit_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, origin = find_config(None)
    assert origin in ("built-in defaults", "/etc/forecaster/config.toml")
    (tmp_path / "config.toml").write_text('log_level = "debug"\n')
    config, origin = find_config(None)
    assert (origin, config.log_level) == ("config.toml", "debug")
    other = tmp_path / "other.toml"
    other.write_text('log_level = "error"\n')
    config, origin = find_config(str(other))
    assert config.log_level == "error"


def test_with_source_only_for_one_camera() -> None:
    config = with_source(Config(), "synthetic:?seed=4")
    assert config.cameras[0].source == "synthetic:?seed=4"
    two = parse_config({"cameras": [{"id": "a"}, {"id": "b"}]})
    with pytest.raises(ConfigError, match="exactly one camera"):
        with_source(two, "x.mp4")


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forecaster", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = _check(ROOT / "config.toml")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nthrottle_ms = 'fast'\n")
    result = _check(bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "worker.throttle_ms" in lines[0] and "'fast'" in lines[0]
    missing = _check(tmp_path / "missing.toml")
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr


def test_every_float_setting_takes_a_whole_number_but_not_a_bool() -> None:
    sections = {
        "capture": {"reconnect_max_s": 7},
        "publish": {"status_interval_s": 2},
        "scorer": {"threshold_on": 4, "threshold_off": 1, "adapt_rate": 0},
        "worker": {"startup_timeout_s": 30, "throttle_ms": 0},
        "service": {"restart_window_s": 90, "stall_timeout_s": 10},
    }
    config = parse_config({**sections, "cameras": [{"fps": 5}]})
    for section, values in sections.items():
        for key, value in values.items():
            got = getattr(getattr(config, section), key)
            assert isinstance(got, float) and got == value, (section, key, got)
    with pytest.raises(ConfigError, match=r"service\.stall_timeout_s"):
        parse_config({"service": {"stall_timeout_s": True}})


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ('[publish]\nendpoint = "tcp://127.0.0.1:70000"\n', "publish.endpoint", "'70000'"),
        ('[publish]\nendpoint = "tcp://127.0.0.1"\n', "publish.endpoint", "'tcp://127.0.0.1'"),
        ("[publish]\nsndhwm = 3000000000\n", "publish.sndhwm", "3000000000"),
        ("[publish]\nlinger_ms = 3000000000\n", "publish.linger_ms", "3000000000"),
        ("[scorer]\nthreshold_on = nan\n", "scorer.threshold_on", "nan"),
        ("[worker]\nthrottle_ms = 1e300\n", "worker.throttle_ms", "1e+300"),
        ("[[cameras]]\nfps = inf\n", "cameras.0.fps", "inf"),
        ('[model]\nruntime = "tflite"\n', "model.runtime", "'tflite'"),
    ],
)
def test_check_config_catches_what_used_to_crash_a_child(
    tmp_path: Path, text: str, key: str, value: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    result = _check(config)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}: " in lines[0] and value in lines[0], result.stderr
