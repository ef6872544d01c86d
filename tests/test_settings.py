"""The one Settings source: environment variables, flags over them, --help from field metadata, and
the app's demo built once, on demand."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest

from flowerdemo.config import AugmentConfig, ConfigError, TrainConfig
from flowerdemo.settings import Settings, add_arguments

REPO = Path(__file__).resolve().parents[1]


def _unwrapped(text: str) -> str:
    return " ".join(text.split())


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.checkpoint_dir, s.data_dirs, s.keep_runs, s.max_upload_mb) == (Path("checkpoints"), (), 20, 1024)
    assert s.cache_dir == Path.home() / ".cache" / "flowerdemo" and s.host is None and s.port is None


def test_each_environment_variable_sets_its_field(tmp_path):
    env = {"FLOWERDEMO_CHECKPOINT_DIR": "/srv/runs", "FLOWERDEMO_DATA_DIRS": os.pathsep.join(["/data/a", "/data/b"]),
           "FLOWERDEMO_KEEP_RUNS": "5", "FLOWERDEMO_MAX_UPLOAD_MB": "64", "FLOWERDEMO_MAX_EXTRACT_MB": "128",
           "FLOWERDEMO_CACHE": str(tmp_path / "cache"), "FLOWERDEMO_WORK_DIR": str(tmp_path / "work"),
           "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    s = Settings.from_env(env)
    assert s == Settings(checkpoint_dir=Path("/srv/runs"), data_dirs=(Path("/data/a"), Path("/data/b")), keep_runs=5,
                         max_upload_mb=64, max_extract_mb=128, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work",
                         host="0.0.0.0", port=7861)
    assert Settings.from_env({"FLOWERDEMO_DATA_DIRS": ""}).data_dirs == ()  # set but empty: none allowed


def test_from_env_reads_the_process_environment_and_features_live_under_the_cache_root(monkeypatch, tmp_path):
    from flowerdemo.train.featurecache import default_cache_dir

    monkeypatch.setenv("FLOWERDEMO_KEEP_RUNS", "3")
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(tmp_path))
    assert Settings.from_env().keep_runs == 3
    assert default_cache_dir() == tmp_path / "features"


@pytest.mark.parametrize("var, value, accepted", [
    ("FLOWERDEMO_KEEP_RUNS", "many", "a whole number >= 0"),
    ("FLOWERDEMO_KEEP_RUNS", "-1", "a whole number >= 0"),
    ("FLOWERDEMO_MAX_UPLOAD_MB", "1.5", "a whole number >= 1"),
    ("GRADIO_SERVER_PORT", "70000", "a whole number from 1 to 65535"),
])
def test_a_bad_value_names_the_variable_what_was_given_and_what_is_accepted(var, value, accepted):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({var: value})
    assert f"{var}={value!r}" in str(err.value) and accepted in str(err.value)


def test_flags_override_the_environment_which_overrides_the_defaults():
    p = argparse.ArgumentParser()
    add_arguments(p)
    env = {"FLOWERDEMO_KEEP_RUNS": "9", "FLOWERDEMO_DATA_DIRS": "/env/data", "FLOWERDEMO_MAX_UPLOAD_MB": "5"}
    s = Settings.from_args(p.parse_args(["--keep-runs", "3", "--data-dir", "/x", "--data-dir", "/y"]), env)
    assert s.keep_runs == 3 and s.data_dirs == (Path("/x"), Path("/y"))  # flags
    assert s.max_upload_mb == 5  # environment
    assert s.checkpoint_dir == Path("checkpoints")  # default
    with pytest.raises(ConfigError, match="keep_runs=-1"):
        Settings.from_args(p.parse_args(["--keep-runs", "-1"]), {})


def test_cli_help_is_the_config_field_metadata(capsys):
    from flowerdemo.cli.main import main

    for cls in (TrainConfig, AugmentConfig):  # house style: every field says why its default is what it is
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = _unwrapped(capsys.readouterr().out)
    smoothing = next(f for f in dataclasses.fields(TrainConfig) if f.name == "label_smoothing")
    assert f"--label-smoothing LABEL_SMOOTHING {smoothing.metadata['help']} [0.1]" in text
    crop = next(f for f in dataclasses.fields(AugmentConfig) if f.name == "crop_scale_min")
    assert f"{crop.metadata['help']} [0.25]" in text
    assert "FLOWERDEMO_CHECKPOINT_DIR" in text and "FLOWERDEMO_CACHE" in text  # --out and --cache-dir


def test_cli_out_and_cache_dir_come_from_the_same_settings(monkeypatch, tmp_path, caplog):
    from flowerdemo.cli.main import main
    from flowerdemo.cli.parser import build_parser

    env = {"FLOWERDEMO_CHECKPOINT_DIR": str(tmp_path / "runs"), "FLOWERDEMO_CACHE": str(tmp_path / "cache")}
    s = Settings.from_args(build_parser().parse_args(["train", "--download-flowers"]), env)
    assert (s.checkpoint_dir, s.cache_dir) == (tmp_path / "runs", tmp_path / "cache")
    s = Settings.from_args(build_parser().parse_args(["train", "--download-flowers", "--out", "/o"]), env)
    assert s.checkpoint_dir == Path("/o")

    # evaluate / predict without --checkpoint look under the configured folder
    monkeypatch.setenv("FLOWERDEMO_CHECKPOINT_DIR", str(tmp_path / "empty"))
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", str(image)]) == 2
    assert f"no checkpoint under {tmp_path / 'empty'}/" in caplog.text


def test_app_help_lists_every_setting_with_its_environment_variable(capsys):
    import app

    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    text = _unwrapped(capsys.readouterr().out)
    for var in ("FLOWERDEMO_CHECKPOINT_DIR", "FLOWERDEMO_DATA_DIRS", "FLOWERDEMO_KEEP_RUNS", "FLOWERDEMO_MAX_UPLOAD_MB",
                "FLOWERDEMO_CACHE", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        assert var in text, var
    for flag in ("--checkpoint-dir", "--data-dir", "--keep-runs", "--max-upload-mb", "--cache-dir", "--host", "--port"):
        assert flag in text, flag


def _fresh_app():
    """app.py executed as a new module object: what `import app` does in a new process."""
    spec = importlib.util.spec_from_file_location("fresh_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_the_app_builds_nothing_and_demo_is_built_once(monkeypatch):
    import ui.predict_tab

    tabs_built = []
    real_build = ui.predict_tab.build
    monkeypatch.setattr(ui.predict_tab, "build", lambda *a: tabs_built.append(1) or real_build(*a))
    app = _fresh_app()
    assert "demo" not in app.__dict__ and not tabs_built

    calls = []
    real_create = app.create_demo
    monkeypatch.setattr(app, "create_demo", lambda *a: calls.append(a) or real_create(*a))
    first = app.demo
    assert app.demo is first and len(calls) == 1 and calls[0] == () and len(tabs_built) == 1
    assert first.ctx.settings == Settings.from_env()
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = app.nothing


def test_main_builds_one_demo_from_flags_and_environment(monkeypatch, tmp_path):
    app = _fresh_app()
    built, launched = [], {}

    class FakeDemo:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.setattr(app, "create_demo", lambda ctx=None: built.append(ctx) or FakeDemo())
    monkeypatch.setenv("FLOWERDEMO_KEEP_RUNS", "7")
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(tmp_path / "env-cache"))
    app.main(["--checkpoint-dir", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work"), "--port", "7999",
              "--cache-dir", str(tmp_path / "cache")])
    assert len(built) == 1 and app.demo is app.__dict__["demo"]  # reading demo afterwards builds no second one
    s = built[0].settings
    assert (s.checkpoint_dir, s.keep_runs, s.cache_dir) == (tmp_path / "runs", 7, tmp_path / "cache")
    assert launched["server_port"] == 7999 and launched["max_file_size"] == 1024 * 1024**2
    assert os.environ["FLOWERDEMO_CACHE"] == str(tmp_path / "cache")  # the feature cache follows --cache-dir
