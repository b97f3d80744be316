"""Training config: YAML + dotted overrides, validation with messages that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import TrainConfig, load_config, parse_override
from core.model import LORA_TARGETS

REPO = Path(__file__).resolve().parents[1]

ISSUE_OVERRIDES = [
    "training.epochs=50",
    "training.batch_size=4",
    "lora.rank=8",
    "lora.alpha=16",
    "data.preprocess_crop_size=[256,256]",
    "training.learning_rate=1e-4",
    "loss.w_sdf_loss=0.5",
]


def test_overrides_from_the_issue_are_typed_and_applied():
    cfg = load_config(None, ISSUE_OVERRIDES)
    assert cfg.training.epochs == 50 and isinstance(cfg.training.epochs, int)
    assert cfg.training.batch_size == 4
    assert cfg.lora.rank == 8 and cfg.lora.alpha == 16.0
    # YAML 1.1 reads "1e-4" as text: it must still become the float 1e-4
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert isinstance(cfg.training.learning_rate, float)
    assert cfg.loss.w_sdf_loss == 0.5
    # the square crop size is the model's view size
    assert cfg.data.preprocess_crop_size == [256, 256]
    assert cfg.model.view_size == 256


def test_yaml_file_then_overrides_later_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  train_data: some/cache\n  classes: 5\n"
        "training:\n  epochs: 3\n  learning_rate: 2.0e-4\n  amp: false\n"
        "sampling:\n  fill_range: [0.4, 0.6]\n"
    )
    cfg = load_config(path, ["training.epochs=7", "lora.enabled=true", "lora.targets=[to_qkv]"])
    assert cfg.data.train_data == "some/cache" and cfg.data.classes == 5
    assert cfg.training.epochs == 7  # the override beats the file
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.training.amp is False
    assert cfg.sampling.fill_range == (0.4, 0.6)
    assert cfg.lora.enabled is True and cfg.lora.targets == ("to_qkv",)


def test_to_dict_is_json_and_round_trips():
    cfg = load_config(None, ISSUE_OVERRIDES + ["sampling.classes=[1,2]", "data.val_data=v"])
    text = json.dumps(cfg.to_dict())  # plain JSON, no custom encoder
    back = TrainConfig.from_dict(json.loads(text))
    assert back == cfg
    assert back.sampling.classes == (1, 2)
    assert back.model.enc_channels == cfg.model.enc_channels


def test_defaults_are_sane():
    cfg = TrainConfig()
    assert set(cfg.lora.targets) <= set(LORA_TARGETS) and "to_out" not in cfg.lora.targets
    assert cfg.lora.modules_to_save == ("decoder.head",)
    assert cfg.training.lr_schedule == "cosine" and cfg.training.amp == "auto"
    assert cfg.data.val_fraction == 0.2


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.epoch=5", "training.epoch"),
        ("trainin.epochs=5", "unknown section 'trainin'"),
        ("loss.w_mask=1", "loss.w_mask"),
    ],
)
def test_unknown_keys_name_the_key_and_the_valid_ones(override, needle):
    with pytest.raises(ValueError, match="valid") as err:
        load_config(None, [override])
    assert needle in str(err.value)
    if override.startswith("training.epoch="):
        assert "epochs" in str(err.value) and "batch_size" in str(err.value)


def test_unknown_key_in_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: 3\n  learnin_rate: 0.1\n")
    with pytest.raises(ValueError) as err:
        load_config(path, [])
    msg = str(err.value)
    assert "bad.yaml" in msg and "training.learnin_rate" in msg and "learning_rate" in msg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.epochs=0", "training.epochs must be at least 1"),
        ("training.epochs=2.5", "training.epochs must be an integer"),
        ("training.batch_size=four", "training.batch_size must be an integer"),
        ("training.learning_rate=-1", "training.learning_rate"),
        ("training.lr_schedule=linear", "cosine, constant"),
        ("training.device=tpu", "training.device"),
        ("training.amp=maybe", "training.amp must be true or false"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.modality=xray", "data.modality"),
        ("data.preprocess_crop_size=[256,128]", "must be square"),
        ("data.preprocess_crop_size=[1,2,3]", "[H, W]"),
        ("data.preprocess_crop_size=[60,60]", "multiple of patch"),
        ("lora.targets=[to_qkv,qkv_proj]", "qkv_proj"),
        ("lora.targets=[cube_encoder.e1.proj]", "cube_encoder.e1.proj"),
        ("lora.rank=0", "lora.rank"),
        ("lora.init_adapter=headneck-ct", "lora.init_adapter needs lora.enabled"),
        ("loss.w_occ_bce=-1", "loss.w_occ_bce"),
        ("model.heads=3", "divisible by heads"),
        ("training.epochs", "section.key=value"),
        ("training.epochs=[1", "not valid YAML"),
        # the sampling section names its keys too (it crashed on some: a traceback)
        ("sampling.classes=3x", "sampling.classes must be an integer"),
        ("sampling.classes=[]", "sampling.classes must name at least one class"),
        ("sampling.p_volume=abc", "sampling.p_volume must be a number"),
        ("sampling.p_refine=1.5", "sampling.p_refine must be <= 1.0"),
        ("sampling.center_jitter=-1", "sampling.center_jitter must be >= 0.0"),
        ("sampling.max_refine_clicks=0", "sampling.max_refine_clicks must be at least 1"),
        ("sampling.max_self_rounds=1.5", "sampling.max_self_rounds must be an integer"),
        ("sampling.fill_range=0.5", "sampling.fill_range must be a list of 2 numbers"),
        ("sampling.prompt_kinds=[blob]", "sampling.prompt_kinds: unknown kinds ['blob']"),
        ("sampling.prompt_probs=[a]", "sampling.prompt_probs must be a number"),
    ],
)
def test_bad_values_raise_clear_errors(override, needle):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_one_sampling_class_may_be_given_as_a_number():
    """`sampling.classes=3` ended in a TypeError traceback (a number, not a list)."""
    assert load_config(None, ["sampling.classes=3"]).sampling.classes == (3,)


def test_lora_targets_take_the_encoders_first_convolutions_by_full_name():
    from core.model import LORA_CONV_TARGETS

    conv = ",".join(LORA_CONV_TARGETS)
    cfg = load_config(None, [f"lora.targets=[to_qkv,{conv}]"])
    assert cfg.lora.targets == ("to_qkv", *LORA_CONV_TARGETS)


def test_all_zero_loss_weights_refused():
    zero = [f"loss.{k}=0" for k in ("w_occ_bce", "w_occ_dice", "w_sdf_loss", "w_mask_loss")]
    with pytest.raises(ValueError, match="at least one loss.w_"):
        load_config(None, zero)


def test_lora_on_random_weights_refused():
    with pytest.raises(ValueError, match="trained base"):
        load_config(None, ["lora.enabled=true", "training.init_checkpoint=random"])


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "nope.yaml", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(ValueError, match="not a valid YAML"):
        load_config(bad, [])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listy, [])


def test_parse_override_reads_values_as_yaml():
    assert parse_override("data.preprocess_crop_size=[64, 64]") == (
        "data",
        "preprocess_crop_size",
        [64, 64],
    )
    assert parse_override("lora.enabled=true")[2] is True
    assert parse_override("data.val_data=null")[2] is None
    assert parse_override('data.train_data="a: b/c"')[2] == "a: b/c"


def test_shipped_configs_load():
    base = load_config(REPO / "configs" / "base_synthetic.yaml", [])
    assert base.lora.enabled is False and base.data.classes == 5
    hn = load_config(REPO / "configs" / "lora_headneck.yaml", [])
    # Trained on openkbp_train only; validation is a split of the training cases, so the
    # openkbp_val set stays unseen for the final evaluation.
    assert "openkbp_train" in hn.data.train_data and "val" not in hn.data.train_data
    assert hn.data.val_data is None and hn.data.val_fraction > 0
    assert hn.data.classes == 7
    assert hn.lora.enabled and hn.lora.rank == 4 and hn.lora.alpha == 8
    assert hn.training.init_checkpoint is None  # the shipped base


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_in_the_repo_loads(path):
    """Experiment configs too: a typo in a key fails here, not an hour into a run."""
    cfg = load_config(path, [])
    assert cfg.data.train_data and cfg.training.epochs > 0
    if cfg.lora.enabled:
        assert cfg.lora.targets and cfg.lora.max_trainable_fraction <= 0.02


@pytest.mark.parametrize("name", ["lora_headneck.yaml", "lora_headneck_mlp.yaml"])
def test_headneck_lora_trains_under_two_percent_of_the_default_model(name):
    lora = pytest.importorskip("core.lora")
    from core.model import Sam3DMed

    hn = load_config(REPO / "configs" / name, [])
    model = lora.apply_lora(Sam3DMed(hn.model), **hn.lora.adapter_settings())
    frac = lora.trainable_fraction(model)
    assert 0.005 < frac < hn.lora.max_trainable_fraction <= 0.02


def test_cli_train_takes_overrides_before_between_and_after_its_flags(monkeypatch, capsys):
    """`sam3d train a=1 --epochs 2 b=2`: argparse alone refused the overrides after a flag
    ("unrecognized arguments")."""
    import core.train
    from core.cli import main

    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg
        raise ValueError("stop here")  # the command line was understood; nothing trains

    monkeypatch.setattr(core.train, "train", fake_train)
    code = main(["train", "training.learning_rate=1e-4", "--epochs", "3", "lora.rank=8",
                 "--batch_size", "2", "loss.w_sdf_loss=0.5"])  # fmt: skip
    assert code == 1 and "stop here" in capsys.readouterr().err
    cfg = seen["cfg"]
    assert cfg.training.learning_rate == 1e-4 and cfg.lora.rank == 8
    assert cfg.loss.w_sdf_loss == 0.5
    assert cfg.training.epochs == 3 and cfg.training.batch_size == 2
    # anything else left over is still refused, by argparse's usual message
    with pytest.raises(SystemExit) as exc:
        main(["train", "training.seed=1", "--epochs", "3", "stray"])
    assert exc.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--out", "x", "a=1"])  # only train takes overrides
    assert "unrecognized arguments: a=1" in capsys.readouterr().err
