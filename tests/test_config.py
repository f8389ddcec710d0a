"""Parameter loading: defaults, validation messages naming the key, overrides, presets."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from hdmnet import config
from hdmnet.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_and_paper_preset_are_valid():
    default = load_params(ROOT / "params.yaml")
    paper = load_params(ROOT / "presets" / "paper.yaml")
    assert default.preset == "default" and paper.preset == "paper"
    assert default.data.source == "synthetic"
    assert paper.grid.datasets == ["pascal", "coco"]
    assert paper.grid.backbones == ["resnet50", "vgg16"]
    assert paper.grid.folds == [0, 1, 2, 3] and paper.grid.shots == [1, 5]
    # The paper preset carries the published schedules (PAPER.md).
    assert paper.meta.pascal.epochs == 200 and paper.meta.coco.epochs == 50
    assert paper.meta.coco.image_size == 633 and paper.meta.pascal.image_size == 473
    assert paper.base.pascal.epochs == 100 and paper.base.coco.epochs == 20


def test_defaults_fill_every_key_from_the_schema(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("{}\n")
    params = load_params(empty)
    assert params.grid.train_seeds == [321]
    assert params.eval.seeds == [510, 365, 382, 322, 988, 98, 742, 17, 595, 106]
    assert params.meta.pascal.scale == [0.9, 1.1]
    assert params.data.min_pixels == 2048


def _schema_keys(node, prefix=""):
    node = config._resolve(node)
    for key, sub in node.get("properties", {}).items():
        sub = config._resolve(sub)
        yield prefix + key, sub
        if sub.get("type") == "object":
            yield from _schema_keys(sub, prefix + key + ".")


def test_every_schema_key_is_documented_with_a_default():
    for key, sub in _schema_keys(config.schema()):
        assert "default" in sub, key
        assert sub.get("description") or sub.get("$ref"), key


def test_typed_dataclasses_match_the_schema():
    """The dataclasses and the schema describe the same keys (no silent drift)."""

    def walk(cls, node):
        node = config._resolve(node)
        names = {f.name for f in dataclasses.fields(cls) if f.name not in ("raw", "origin")}
        assert names == set(node["properties"]), cls.__name__
        hints = __import__("typing").get_type_hints(cls)
        for name in names:
            if dataclasses.is_dataclass(hints[name]):
                walk(hints[name], node["properties"][name])

    walk(config.Params, config.schema())


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("grid.folds=[0, 4]", "grid.folds.1"),
        ("grid.shots=[0]", "grid.shots.0"),
        ("meta.pascal.epochs=three", "meta.pascal.epochs"),
        ("meta.pascal.shot_epochs={5: 0}", "meta.pascal.shot_epochs.5"),
        ("meta.pascal.shot_epochs={five: 3}", "meta.pascal.shot_epochs"),
        ("data.coco_split=random", "data.coco_split"),
        ("model.stages=0", "model.stages"),
        ("grid.backbones=[resnet18]", "grid.backbones.0"),
        ("base.pascal.optimizer=adam", "base.pascal.optimizer"),
        ("base.pascal.images=some", "base.pascal.images"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ParamsError) as error:
        load_params(ROOT / "params.yaml", [override])
    assert key in str(error.value)


def test_unknown_keys_are_rejected_in_files_and_overrides(tmp_path):
    with pytest.raises(ParamsError, match=r"grid\.foldz"):
        load_params(ROOT / "params.yaml", ["grid.foldz=[1]"])
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"meta": {"pascal": {"epochz": 3}}}))
    with pytest.raises(ParamsError, match="epochz"):
        load_params(bad)


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ParamsError, match="key=value"):
        load_params(ROOT / "params.yaml", ["grid.folds"])
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("grid: [unclosed\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml"):
        load_params(broken)


def test_overrides_are_parsed_and_applied():
    params = load_params(
        ROOT / "params.yaml", ["meta.pascal.epochs=3", "grid.folds=[1, 2]", "model.bf16=true"]
    )
    assert params.meta.pascal.epochs == 3
    assert params.grid.folds == [1, 2]
    assert params.model.bf16 is True
    assert isinstance(params.meta.pascal.lr, float)
    # The same on loaded parameters: the file's other values stay, bad keys are refused.
    again = params.with_overrides(["meta.pascal.epochs=4"])
    assert again.meta.pascal.epochs == 4 and again.grid.folds == [1, 2]
    with pytest.raises(ParamsError, match=r"meta\.pascal\.epochz"):
        params.with_overrides(["meta.pascal.epochz=4"])


def test_shot_epochs_set_one_shot_count_and_retrain_only_its_jobs():
    from hdmnet.identity import meta_learner
    from hdmnet.layout import Run

    params = load_params(
        ROOT / "params.yaml", ["meta.pascal.epochs=5", "meta.pascal.shot_epochs={5: 3}"]
    )
    assert params.meta.pascal.epochs_for(1) == 5 and params.meta.pascal.epochs_for(5) == 3
    changed = load_params(
        ROOT / "params.yaml", ["meta.pascal.epochs=5", "meta.pascal.shot_epochs={5: 4}"]
    )
    for shot, same in ((1, True), (5, False)):
        run = Run("pascal", "small", "full", 0, shot, 321)
        assert (meta_learner(params, run) == meta_learner(changed, run)) is same
    # Listing a shot with the default epoch count is the same job as not listing it.
    spelled = load_params(
        ROOT / "params.yaml", ["meta.pascal.epochs=5", "meta.pascal.shot_epochs={1: 5, 5: 3}"]
    )
    run = Run("pascal", "small", "full", 0, 1, 321)
    assert meta_learner(spelled, run) == meta_learner(params, run)


def test_variants_apply_their_overrides_and_change_the_digest():
    params = load_params(ROOT / "params.yaml")
    one_stage = params.for_variant("stages_1")
    assert one_stage.model.stages == 1 and params.model.stages == 3
    assert one_stage.digest("model") != params.digest("model")
    assert one_stage.digest("meta") == params.digest("meta")
    assert params.for_variant("no_exclusion").data.exclude_novel is False
    with pytest.raises(ParamsError, match="unknown variant 'nope'"):
        params.for_variant("nope")


def test_variant_keys_are_checked(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"variants": {"x": {"model.stagez": 1}}}))
    with pytest.raises(ParamsError, match=r"variants\.x.*model\.stagez"):
        load_params(bad)
    for key, value in (("grid.folds", [0]), ("model.small_width", 0.5), ("base.pascal.lr", 1.0)):
        bad.write_text(yaml.safe_dump({"variants": {"x": {key: value}}}))
        with pytest.raises(ParamsError, match=rf"variants\.x: key '{key}' cannot vary"):
            load_params(bad)
    bad.write_text(yaml.safe_dump({"ablation": {"variants": ["ghost"]}}))
    with pytest.raises(ParamsError, match="ghost"):
        load_params(bad)


def test_schema_file_in_workflow_is_the_package_schema():
    workflow_copy = ROOT / "workflow" / "schemas" / "params.schema.yaml"
    assert yaml.safe_load(workflow_copy.read_text()) == config.schema()


def test_paper_preset_spells_out_every_key():
    """Snakemake merges the preset over params.yaml: a key the preset left out would silently
    come from the default preset, so the preset must be complete."""
    path = ROOT / "presets" / "paper.yaml"
    assert yaml.safe_load(path.read_text()) == load_params(path).to_dict()


def write(tmp_path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_variant_that_acts_only_with_several_shots_is_refused_at_one_shot(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ablation"]["variants"].append("fixed_quirks")
    with pytest.raises(ParamsError, match=r"fixed_quirks at 1 shot would measure nothing"):
        load_params(write(tmp_path, raw))
    # Where it belongs: beside the full model at 5 shots.
    from hdmnet.layout import Run, ablation_runs

    runs = ablation_runs(load_params(ROOT / "params.yaml"))
    assert [r for r in runs if r.variant == "fixed_quirks"] == [
        Run("pascal", "small", "fixed_quirks", 0, 5, 321)
    ]
    assert all(r.shot == 1 for r in runs if r.variant != "fixed_quirks")


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"model.stages": 3}, "sets only values the full model already has"),
        ({"model.stages": 7}, r"variants\.x: model\.stages: 7 is greater than the maximum"),
        ({}, "a variant maps dotted keys to values"),
    ],
)
def test_each_variant_is_a_real_valid_change(tmp_path, variant, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, {"variants": {"x": variant}}))


@pytest.mark.parametrize("name", ["a/b", "../up", "full", "<b>", "with space", "9lives", "x-y"])
def test_variant_names_are_ones_paths_wildcards_and_mlflow_accept(tmp_path, name):
    with pytest.raises(ParamsError, match="bad variant name"):
        load_params(write(tmp_path, {"variants": {name: {"model.stages": 1}}}))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"meta:\n  distill_weight: {value}\n")
    with pytest.raises(ParamsError, match=r"meta\.distill_weight: .* is not a finite number"):
        load_params(path)
    with pytest.raises(ParamsError, match=r"meta\.pascal\.lr: nan is not a finite number"):
        load_params(ROOT / "params.yaml", ["meta.pascal.lr=.nan"])


# --- one override model (issue 12) --------------------------------------------------------------


def test_a_partial_file_layers_over_params_yaml_not_over_the_papers_defaults(tmp_path, monkeypatch):
    from hdmnet.config import resolve_params

    override = tmp_path / "override.yaml"
    override.write_text("meta:\n  pascal:\n    epochs: 6\n")
    monkeypatch.chdir(ROOT)
    params = resolve_params([override], ["grid.folds=[0, 1]"])
    default = load_params(ROOT / "params.yaml")
    assert params.meta.pascal.epochs == 6 and params.grid.folds == [0, 1]
    # Everything else is the default preset's (97 px), not the schema's (the paper's 473 px).
    assert params.meta.pascal.image_size == default.meta.pascal.image_size == 97
    assert params.base.pascal.epochs == default.base.pascal.epochs
    assert params.origin == ("--params", str(override), "-s", "grid.folds=[0, 1]")
    # Files apply in order, key=value pairs last.
    later = tmp_path / "later.yaml"
    later.write_text("meta:\n  pascal:\n    epochs: 7\n")
    assert resolve_params([override, later]).meta.pascal.epochs == 7
    assert resolve_params([override, later], ["meta.pascal.epochs=8"]).meta.pascal.epochs == 8


def test_without_params_yaml_a_partial_file_is_refused(tmp_path, monkeypatch):
    from hdmnet.config import resolve_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "override.yaml").write_text("meta:\n  pascal:\n    epochs: 6\n")
    with pytest.raises(ParamsError, match=r"override\.yaml: not a complete parameter file"):
        resolve_params([Path("override.yaml")])
    # A complete preset needs no base.
    shutil.copy(ROOT / "presets" / "paper.yaml", tmp_path / "paper.yaml")
    assert resolve_params([Path("paper.yaml")]).preset == "paper"


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (f"data.checksums={{voc2012: {'ab' * 20}}}", "data.checksums.voc2012"),
        (f"data.checksums={{voc: {SHA}}}", "data.checksums"),
    ],
)
def test_own_checksums_are_sha256_digests_of_known_archives(override, key):
    with pytest.raises(ParamsError) as error:
        load_params(ROOT / "params.yaml", ["data.source=official", override])
    assert key in str(error.value)
    params = load_params(
        ROOT / "params.yaml", ["data.source=official", f"data.checksums.sbd={SHA}"]
    )
    assert params.data.checksums == {"sbd": SHA}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.mirror=https://mirror.example/hdm", "data.mirror"),
        (f"data.checksums.sbd={SHA}", "data.checksums"),
    ],
)
def test_official_archive_settings_with_generated_data_warn_at_load(override, key, caplog):
    """data.mirror and data.checksums concern the official archives: with data.source synthetic
    they would do nothing, so loading says so (naming the key and the fix) instead of ignoring
    them silently."""
    with caplog.at_level("WARNING", logger="hdmnet"):
        load_params(ROOT / "params.yaml", [override])
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage().startswith(f"{key} is ignored: data.source is synthetic")
    assert "-s data.source=official" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="hdmnet"):
        load_params(ROOT / "params.yaml", [override, "data.source=official"])
        load_params(ROOT / "params.yaml")
    assert caplog.records == []


def test_own_checksums_change_the_identity_of_that_datasets_data_only():
    """Other bytes make other data: a custom checksum re-runs the download (and everything
    after it) of its data set; where the official bytes come from (mirror, local copy) does not."""
    from hdmnet import identity

    official = load_params(ROOT / "params.yaml", ["data.source=official"])
    own = official.with_overrides([f"data.checksums.sbd={SHA}"])
    copies = official.with_overrides(["data.mirror=/srv/archives", "data.local_files.sbd=/x.tgz"])
    assert identity.prepare(own, "pascal") != identity.prepare(official, "pascal")
    assert identity.prepare(own, "coco") == identity.prepare(official, "coco")
    assert identity.prepare(copies, "pascal") == identity.prepare(official, "pascal")
