"""Run folders on a shared server, without the app: the default model, ownership records, per-visitor and
disk bounds, and the settings that choose them."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flowerdemo.config import ConfigError
from flowerdemo.models.checkpoints import FORMAT, WEIGHTS, CheckpointError
from flowerdemo.serve import owners
from flowerdemo.serve.runs import DEFAULT_RUN, NAME_FILE, default_run, import_run, pin, prune_runs, zip_run
from flowerdemo.settings import Settings


def fake_run(root: Path, name: str, age: float = 0.0, size: int = 1) -> Path:
    """A run folder whose checkpoint header reads as flowerdemo's (the weights are not a model)."""
    run = root / name
    run.mkdir(parents=True)
    meta = {"format": FORMAT, "format_version": 1, "architecture": "efficientnet_lite0", "classes": ["a", "b"],
            "head": {}, "preprocessing": {}}
    save_file({"w": torch.zeros(size)}, str(run / WEIGHTS), metadata={"flowerdemo": json.dumps(meta)})
    stamp = time.time() - age
    os.utime(run / WEIGHTS, (stamp, stamp))
    return run


def test_the_default_is_the_named_run_else_the_bundled_one_else_the_oldest_operators_never_a_visitors(tmp_path):
    visitor = fake_run(tmp_path, "0-visitors-oldest", age=300)
    owners.claim(visitor, "visitor-token", "uploaded")
    old, new = fake_run(tmp_path, "operator-old", age=200), fake_run(tmp_path, "operator-new", age=100)
    assert default_run(tmp_path) == old.resolve()  # not the newest, not the visitor's older one
    assert default_run(tmp_path, "operator-new") == new.resolve()
    assert default_run(tmp_path, str(new)) == new.resolve()  # a path works too
    bundled = fake_run(tmp_path, DEFAULT_RUN, age=0)
    assert default_run(tmp_path) == bundled.resolve()
    with pytest.raises(ConfigError) as err:
        default_run(tmp_path, "no-such-run")
    assert "'no-such-run'" in str(err.value) and "operator-old" in str(err.value) and "run folder" in str(err.value)
    assert default_run(tmp_path / "empty") is None


def test_new_settings_come_from_flags_and_variables_and_bad_values_say_what_is_accepted():
    import argparse

    from flowerdemo.settings import add_arguments

    s = Settings.from_env({"FLOWERDEMO_DEFAULT_MODEL": "my-run", "FLOWERDEMO_SHARE_RUNS": "yes",
                           "FLOWERDEMO_RUNS_PER_VISITOR": "2", "FLOWERDEMO_RUNS_DISK_MB": "100"})
    assert (s.default_model, s.share_runs, s.runs_per_visitor, s.runs_disk_mb) == ("my-run", True, 2, 100)
    assert Settings.from_env({"FLOWERDEMO_SHARE_RUNS": "off"}).share_runs is False
    p = argparse.ArgumentParser()
    add_arguments(p)
    s = Settings.from_args(p.parse_args(["--default-model", "x", "--no-share-runs"]), {"FLOWERDEMO_SHARE_RUNS": "1"})
    assert s.default_model == "x" and s.share_runs is False
    assert Settings.from_args(p.parse_args([]), {}).share_runs is False
    with pytest.raises(ConfigError, match="FLOWERDEMO_SHARE_RUNS='maybe'.*true or false"):
        Settings.from_env({"FLOWERDEMO_SHARE_RUNS": "maybe"})
    with pytest.raises(ConfigError, match="FLOWERDEMO_RUNS_PER_VISITOR='0'.*>= 1"):
        Settings.from_env({"FLOWERDEMO_RUNS_PER_VISITOR": "0"})
    with pytest.raises(ConfigError, match="default_model=' '"):
        Settings(default_model=" ")


def test_ownership_is_a_hash_beside_the_checkpoint_and_only_the_owner_renames_shares_or_deletes(tmp_path):
    run = fake_run(tmp_path, "r1")
    owners.claim(run, "alice-token", "trained")
    assert "alice-token" not in (run / owners.OWNER_FILE).read_text()
    assert owners.is_owner(run, "alice-token") and not owners.is_owner(run, "bob-token")
    assert owners.rename(run, "alice-token", "  My   tulips ") == "My tulips"
    assert owners.display_name(run) == "My tulips"
    for act in (lambda: owners.rename(run, "bob-token", "x"), lambda: owners.share_code(run, "bob-token"),
                lambda: owners.delete(run, "bob-token", tmp_path)):
        with pytest.raises(owners.NotYours, match="another visitor's model"):
            act()
    code = owners.share_code(run, "alice-token")
    assert owners.share_code(run, "alice-token") == code and owners.find_shared(tmp_path, code) == run
    assert owners.find_shared(tmp_path, "../etc") is None
    assert [r for r, _ in owners.visible_runs(tmp_path, "bob-token", share_all=False)] == []
    assert [r for r, _ in owners.visible_runs(tmp_path, "bob-token", share_all=True)] == [run]
    assert owners.may_download(run, "alice-token") and not owners.may_download(run, "bob-token")
    with zip_run(run, tmp_path / "dl").open("rb") as f:  # the record never leaves with a download
        assert owners.OWNER_FILE.encode() not in f.read()
    with pytest.raises(ValueError, match="1 to 60"):
        owners.rename(run, "alice-token", "x" * 61)
    owners.delete(run, "alice-token", tmp_path)
    assert not run.exists()


def test_an_imported_checkpoint_is_its_uploaders_and_an_uploaded_record_is_ignored(tmp_path):
    src = fake_run(tmp_path / "src", "shipped")
    (src / owners.OWNER_FILE).write_text(json.dumps({"owner": owners.owner_key("mallory")}))
    named = zip_run(src, tmp_path / "named", name="Garden flowers: May/June ü")
    assert named.name == "Garden-flowers-May-June.zip"  # a visitor's name, made a safe file name
    assert zip_run(src, tmp_path / "odd", name="../..").name == f"{src.name}.zip"  # nothing left: the run's
    assert zip_run(src, tmp_path / "stars", name="★★★").name == f"{src.name}.zip"
    back = import_run(named, tmp_path / "root-named", owner="dave")
    assert back.name == src.name  # the folder inside keeps the run's name, and the name it was given travels
    assert owners.display_name(back) == "Garden flowers: May/June ü" and not (back / NAME_FILE).exists()
    again = [import_run(named, tmp_path / "root-named", owner="dave") for _ in range(2)]  # the same .zip twice more
    assert [owners.display_name(r) for r in again] == ["Garden flowers: May/June ü (2)", "Garden flowers: May/June ü (3)"]
    assert owners.display_name(import_run(named, tmp_path / "root-named", owner="fay")) == "Garden flowers: May/June ü"
    odd_zip = tmp_path / "odd-name.zip"  # a name file as anyone could have zipped it
    with zipfile.ZipFile(odd_zip, "w") as zf:
        zf.write(src / WEIGHTS, f"run/{WEIGHTS}")
        zf.writestr(f"run/{NAME_FILE}", "  two\tlines\nand\x07 a bell " + "x" * 200)
    assert owners.display_name(import_run(odd_zip, tmp_path / "root-odd", owner="erin")) == \
        ("two lines and a bell " + "x" * 200)[:owners.MAX_NAME]
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"onnx")
    with pytest.raises(CheckpointError, match="model.onnx is an ONNX export.*examples/onnx_predict.py"):
        import_run(exported, tmp_path / "root-onnx")
    assert not any((tmp_path / "root-onnx").iterdir())  # nothing left behind
    run = import_run(zip_run(src, tmp_path / "zips"), tmp_path / "root", owner="carol")
    assert owners.is_owner(run, "carol") and owners.read_owner(run).kind == "uploaded"
    run2 = import_run(src / WEIGHTS, tmp_path / "root")  # the operator's (CLI): no record
    assert owners.read_owner(run2) is None


def test_each_visitor_keeps_their_newest_runs_and_the_disk_budget_spares_the_default_and_pinned(tmp_path):
    mine = [fake_run(tmp_path, f"mine-{i}", age=100 - i) for i in range(4)]
    for run in mine:
        owners.claim(run, "alice", "trained")
        time.sleep(0.01)  # claims are ordered by time
    theirs = fake_run(tmp_path, "bobs")
    owners.claim(theirs, "bob", "trained")
    gone = owners.limit_owner(tmp_path, "alice", "trained", keep=2, protect=[mine[0]])
    assert gone == mine[1:3] and mine[0].exists() and mine[3].exists() and theirs.exists()

    budget = tmp_path / "budget"
    default = fake_run(budget, "default", age=500, size=100_000)
    pinned = fake_run(budget, "pinned", age=400, size=100_000)
    pin(pinned)
    runs = [fake_run(budget, f"r{i}", age=300 - i, size=100_000) for i in range(3)]
    gone = prune_runs(budget, keep=0, protect=[default], max_bytes=4 * 400_000 + 200_000)
    assert gone == runs[:1] and default.exists() and pinned.exists() and runs[1].exists()


def test_the_page_heading_names_what_the_default_model_knows_not_flowers(tmp_path):
    import app
    from ui.state import AppContext

    def heading(runs: Path) -> str:
        return app.intro(AppContext.create(Settings(checkpoint_dir=runs, work_dir=tmp_path / "work",
                                                    cache_dir=tmp_path / "cache")))

    fake_run(tmp_path / "runs", "operators")  # classes a and b
    text = heading(tmp_path / "runs")
    assert "knowing 2 classes (a, b)" in text and "flower" not in text.lower().split("\n")[0]
    assert "knowing" not in heading(tmp_path / "empty")  # no default model: nothing claimed
