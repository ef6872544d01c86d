"""evaluate --split val and ship_model score a checkpoint on the split it was trained with: grouped (near-duplicate
photos kept on one side) for runs that kept groups, plain for checkpoints made before that existed."""

from __future__ import annotations

from flowerdemo.data.dataset import checkpoint_split, scan_dataset
from tests.synth import make_dataset


def _sides(split) -> dict[str, str]:
    return {**{s.path.name: "train" for s in split.train}, **{s.path.name: "val" for s in split.val}}


def test_checkpoint_split_follows_the_runs_keep_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWERDEMO_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "d", per_class=10, size=48, classes=("circle", "square"))
    for i in range(3):  # copies of circle photos: some seed's plain split puts a copy and its original apart
        (data / "circle" / f"copy_{i}.png").write_bytes((data / "circle" / f"circle_00{i}.png").read_bytes())
    seed = next(s for s in range(60) if any(
        len({_sides(scan_dataset(data, seed=s, keep_groups=False))[n] for n in (f"copy_{i}.png", f"circle_00{i}.png")}) == 2
        for i in range(3)))
    plain = _sides(scan_dataset(data, seed=seed, keep_groups=False))
    grouped = _sides(scan_dataset(data, seed=seed, keep_groups=True))
    assert plain != grouped
    assert all(grouped[f"copy_{i}.png"] == grouped[f"circle_00{i}.png"] for i in range(3))
    config = {"config": {"val_fraction": 0.2, "seed": seed}}
    assert _sides(checkpoint_split(data, {**config, "data": {}})) == plain  # an older checkpoint: its plain split
    assert _sides(checkpoint_split(data, {**config, "data": {"keep_groups": True}})) == grouped


def test_a_run_records_whether_it_kept_groups(trained_run):
    from flowerdemo.models.checkpoints import read_meta

    data = read_meta(trained_run.run_dir)["data"]
    assert data["keep_groups"] == (data["near_duplicate_groups"] > 0)
    assert "groups_kept_together" in data
