"""Training configuration: nested dataclasses, a YAML file and dotted command-line overrides.

``TrainConfig`` is the whole run: ``model`` (``core.model.ModelConfig``), ``data``,
``training``, ``loss``, ``lora`` and ``sampling`` (``core.cubes.CubeSampling``). Every section
validates itself in ``__post_init__`` and raises ``ValueError`` naming the bad key. The config
is saved as ``config.json`` next to every checkpoint and adapter (:meth:`TrainConfig.to_dict`).

A YAML file mirrors the sections::

    data:
      train_data: cache/hearts        # a preprocessed cache, or a raw dataset folder
      classes: 5
    training:
      epochs: 20
      batch_size: 4
      learning_rate: 3.0e-4
    lora:
      enabled: false

and ``section.key=value`` overrides change single values; values are read as YAML, so
``data.preprocess_crop_size=[256,256]``, ``training.learning_rate=1e-4`` and
``lora.enabled=true`` all work (:func:`load_config`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from core.cubes import CubeSampling
from core.model import LORA_CONV_TARGETS, LORA_TARGETS, ModelConfig

__all__ = [
    "DataSection",
    "TrainingSection",
    "LossSection",
    "LoraSection",
    "TrainConfig",
    "load_config",
    "resolve_config",
    "shipped_configs",
    "parse_override",
]

SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "bf16", "fp16")
# training.init_checkpoint values that are not paths
INIT_DEFAULT = None  # the shipped base (core.weights) when installed, else random weights
INIT_RANDOM = "random"


# --------------------------------------------------------------------------------------------
# Value checks shared by the sections (``name`` is the dotted key, for the message)


def _int(name: str, v, *, lo: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {v!r}") from None
    if not f.is_integer():
        raise ValueError(f"{name} must be an integer, got {v!r}")
    out = int(f)
    if lo is not None and out < lo:
        raise ValueError(f"{name} must be at least {lo}, got {out}")
    return out


def _float(name: str, v, *, lo: float | None = None, lo_open: bool = False, hi=None) -> float:
    # YAML 1.1 reads "1e-4" (no dot) as a string: accept any text float() accepts.
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    try:
        out = float(v)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if lo is not None and (out <= lo if lo_open else out < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {out}")
    if hi is not None and out > hi:
        raise ValueError(f"{name} must be <= {hi}, got {out}")
    return out


def _bool(name: str, v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return v.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"{name} must be true or false, got {v!r}")


def _choice(name: str, v, choices) -> str:
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {v!r}")
    return v


def _opt_path(name: str, v) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path, got {v!r}")
    return str(v)


def _str_tuple(name: str, v) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"{name} must be a list of names, got {v!r}")
    return tuple(v)


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class DataSection:
    """Where the training data is and how a raw dataset is preprocessed.

    Attributes
    ----------
    train_data : a preprocessed cache (a folder with ``manifest.json``) or a raw dataset
        folder of any layout (``core.datasets``), which is first preprocessed into
        ``<training.output_dir>/cache``. Relative paths are relative to the working directory.
    val_data : optional separate validation folder (cache or raw; raw goes to
        ``<output_dir>/cache_val``). When absent, ``val_fraction`` of the training *cases*
        are held out (never slices of a training case: no leakage).
    val_fraction : share of training cases held out when ``val_data`` is absent (0 disables
        validation; ``best.pt`` then follows the training loss)
    split_seed : seed of the train/validation case split and of the fixed validation items;
        ``None``: ``training.seed``. Set it to continue a run on fresh training samples
        (another ``training.seed``) with the same split and validation items.
    classes : K, the number of label classes (needed to preprocess a raw folder; checked
        against a cache's own when given)
    spacing : isotropic preprocessing spacing, mm (raw folders only)
    modality : "ct", "mr" or "us": how a raw folder is normalised; a cache must have been
        built with it (recorded in the adapter, which warns when run on another modality).
        None (the default): a cache's own, or what a raw folder's ``dataset.json`` declares
        (nnU-Net ``channel_names``), else CT; the run's ``config.json`` records the one used
    preprocess_crop_size : side, in pixels, of the model's square slice views (crop and full
        view). An alias of ``model.view_size``: ``[H, W]`` with ``H == W`` (or one int) sets
        ``model.view_size = H``; a non-square size is refused (the views are square).
    num_workers : DataLoader worker processes (0: load in the training process); they start
        once and live through the run, keeping their per-case caches
    """

    train_data: str = ""
    val_data: str | None = None
    val_fraction: float = 0.2
    split_seed: int | None = None
    classes: int | None = None
    spacing: float = 3.0
    modality: str | None = None
    preprocess_crop_size: int | list[int] | None = None
    num_workers: int = 0

    def __post_init__(self):
        from core.intensity import MODALITIES

        self.train_data = _opt_path("data.train_data", self.train_data) or ""
        self.val_data = _opt_path("data.val_data", self.val_data)
        self.val_fraction = _float("data.val_fraction", self.val_fraction, lo=0.0, hi=0.9)
        self.split_seed = _int("data.split_seed", self.split_seed, lo=0, optional=True)
        self.classes = _int("data.classes", self.classes, lo=1, optional=True)
        self.spacing = _float("data.spacing", self.spacing, lo=0.0, lo_open=True)
        if self.modality is not None:
            self.modality = _choice("data.modality", self.modality, MODALITIES)
        self.num_workers = _int("data.num_workers", self.num_workers, lo=0)
        c = self.preprocess_crop_size
        if c is not None:
            sides = list(c) if isinstance(c, (list, tuple)) else [c, c]
            if len(sides) != 2:
                raise ValueError(f"data.preprocess_crop_size must be [H, W] or one int, got {c!r}")
            h, w = (_int("data.preprocess_crop_size", s, lo=8) for s in sides)
            if h != w:
                raise ValueError(
                    f"data.preprocess_crop_size must be square (the model's views are), got {c!r}"
                )
            self.preprocess_crop_size = [h, w]


@dataclass
class TrainingSection:
    """The optimisation loop.

    Attributes
    ----------
    epochs : passes over the training slices
    batch_size : items per micro-batch (per process under torchrun)
    grad_accum : micro-batches per optimizer step
    learning_rate : peak learning rate (AdamW)
    weight_decay : AdamW weight decay (not applied to 1-D parameters: biases, norm weights)
    warmup_steps : optimizer steps of linear warmup
    lr_schedule : "cosine" (down to ``min_lr_ratio`` x peak at the last step) or "constant"
    min_lr_ratio : final learning rate / peak for the cosine schedule
    grad_clip : max global gradient norm (0 disables)
    amp : mixed precision: "auto" or true (on CUDA; on a CPU as bf16 autocast where it is
        the faster precision: AMX, or measured once per machine on CPUs with AVX512-BF16
        alone, ``core.precision``; ``SAM3D_CPU_BF16=0`` keeps fp32), or false.
    amp_dtype : "auto" (bf16 where supported, else fp16 with a GradScaler), "bf16", "fp16"
    seed : seeds torch, numpy, random, the case split and the data
    device : "auto" (CUDA when available), "cpu" or "cuda"
    output_dir : checkpoints, logs, metrics and the loss curve go here
    steps_per_epoch : cap on optimizer steps per epoch (quick runs); all batches when None
    val_cases : at most this many validation volumes (cases)
    val_items : validation items per mode ("volume" and "slice"), fixed for the whole run
    checkpoint_every : also keep ``epoch_{k:03d}.pt`` every this many epochs (0: never)
    init_checkpoint : starting weights: a ``.safetensors`` base (with its ``.json``) or a
        ``.pt`` checkpoint; None: the shipped base (``core.weights``) when installed, else
        random weights; "random": random weights. LoRA needs a base.
    """

    epochs: int = 20
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: str | bool = "auto"
    amp_dtype: str = "auto"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/train"
    steps_per_epoch: int | None = None
    val_cases: int = 8
    val_items: int = 16
    checkpoint_every: int = 5
    init_checkpoint: str | None = INIT_DEFAULT

    def __post_init__(self):
        self.epochs = _int("training.epochs", self.epochs, lo=1)
        self.batch_size = _int("training.batch_size", self.batch_size, lo=1)
        self.grad_accum = _int("training.grad_accum", self.grad_accum, lo=1)
        self.learning_rate = _float(
            "training.learning_rate", self.learning_rate, lo=0.0, lo_open=True
        )
        self.weight_decay = _float("training.weight_decay", self.weight_decay, lo=0.0)
        self.warmup_steps = _int("training.warmup_steps", self.warmup_steps, lo=0)
        self.lr_schedule = _choice("training.lr_schedule", self.lr_schedule, SCHEDULES)
        self.min_lr_ratio = _float("training.min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        self.grad_clip = _float("training.grad_clip", self.grad_clip, lo=0.0)
        if self.amp != "auto":
            self.amp = _bool("training.amp", self.amp)
        self.amp_dtype = _choice("training.amp_dtype", self.amp_dtype, AMP_DTYPES)
        self.seed = _int("training.seed", self.seed, lo=0)
        self.device = _choice("training.device", self.device, DEVICES)
        self.output_dir = _opt_path("training.output_dir", self.output_dir) or ""
        if not self.output_dir:
            raise ValueError("training.output_dir must be a folder path")
        self.steps_per_epoch = _int(
            "training.steps_per_epoch", self.steps_per_epoch, lo=1, optional=True
        )
        self.val_cases = _int("training.val_cases", self.val_cases, lo=1)
        self.val_items = _int("training.val_items", self.val_items, lo=1)
        self.checkpoint_every = _int("training.checkpoint_every", self.checkpoint_every, lo=0)
        self.init_checkpoint = _opt_path("training.init_checkpoint", self.init_checkpoint)


@dataclass
class LossSection:
    """Weights of the loss terms (``core.losses.compute_loss``).

    Attributes
    ----------
    w_occ_bce : BCE on the occupancy logits
    w_occ_dice : soft Dice on the occupancy
    w_sdf_loss : L1 on the truncated SDF (where the target has one)
    w_mask_loss : BCE + soft Dice on the clicked slice's 2D mask
    """

    w_occ_bce: float = 1.0
    w_occ_dice: float = 1.0
    w_sdf_loss: float = 1.0
    w_mask_loss: float = 0.5

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _float(f"loss.{f.name}", getattr(self, f.name), lo=0.0))
        if not any(getattr(self, f.name) > 0 for f in fields(self)):
            raise ValueError("at least one loss.w_* weight must be positive")


@dataclass
class LoraSection:
    """LoRA fine-tuning of a base model (``core.lora``, through peft).

    Attributes
    ----------
    enabled : train LoRA adapters instead of all weights
    rank, alpha, dropout : LoRA hyper-parameters (scale = alpha / rank)
    targets : the layers that get adapters: transformer linears by name
        (``core.model.LORA_TARGETS``) and, optionally, the encoders' first convolutions by
        their full names (``core.model.LORA_CONV_TARGETS``)
    modules_to_save : modules trained in full next to the adapters (the occupancy head)
    max_trainable_fraction : refuse to train when more than this share of the weights is
        trainable (a LoRA run that trains much of the model is not a LoRA run). The defaults
        (rank 4 on everything but ``to_out``, plus the occupancy head) train 1.87 % of the
        default model; rank 8 on all of ``LORA_TARGETS`` would train 4.6 %: raise this limit
        explicitly if that is what you want.
    init_adapter : start from this adapter's weights (a shipped name such as
        ``headneck-ct`` or an adapter folder) instead of a fresh adapter, to train it further;
        it must have been trained on the same base, with the rank, alpha, dropout, targets and
        modules_to_save of this section
    """

    enabled: bool = False
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("to_qkv", "to_q", "to_kv", "fc1", "fc2")
    modules_to_save: tuple[str, ...] = ("decoder.head",)
    max_trainable_fraction: float = 0.02
    init_adapter: str | None = None

    def __post_init__(self):
        self.enabled = _bool("lora.enabled", self.enabled)
        self.init_adapter = _opt_path("lora.init_adapter", self.init_adapter)
        if self.init_adapter is not None and not self.enabled:
            raise ValueError("lora.init_adapter needs lora.enabled: true")
        self.rank = _int("lora.rank", self.rank, lo=1)
        self.alpha = _float("lora.alpha", self.alpha, lo=0.0, lo_open=True)
        self.dropout = _float("lora.dropout", self.dropout, lo=0.0, hi=0.9)
        self.targets = _str_tuple("lora.targets", self.targets)
        if not self.targets:
            raise ValueError("lora.targets must name at least one layer")
        valid = LORA_TARGETS + LORA_CONV_TARGETS
        unknown = sorted(set(self.targets) - set(valid))
        if unknown:
            raise ValueError(
                f"lora.targets: unknown layer names {unknown}; valid: {', '.join(valid)}"
            )
        self.modules_to_save = (
            ()
            if self.modules_to_save is None
            else _str_tuple("lora.modules_to_save", self.modules_to_save)
        )
        self.max_trainable_fraction = _float(
            "lora.max_trainable_fraction", self.max_trainable_fraction, lo=0.0, lo_open=True, hi=1.0
        )

    def adapter_settings(self) -> dict:
        """The settings that make an adapter (``core.lora.apply_lora``'s keywords, and what
        ``core.lora.lora_settings`` records): rank, alpha, dropout, targets, modules_to_save."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": self.targets,
            "modules_to_save": self.modules_to_save,
        }


_SECTIONS = {
    "model": ModelConfig,
    "data": DataSection,
    "training": TrainingSection,
    "loss": LossSection,
    "lora": LoraSection,
    "sampling": CubeSampling,
}
_SAMPLING_PROBABILITIES = (
    "p_volume", "p_default_spacing", "p_refine", "p_self_refine", "p_no_click_round",
)  # fmt: skip
_SAMPLING_NON_NEGATIVE = ("scale_noise", "center_jitter", "point_jitter", "intensity_jitter")


def _float_tuple(name: str, v, *, n: int | None = None, **limits) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        size = f"{n} numbers" if n is not None else "numbers"
        raise ValueError(f"{name} must be a list of {size}, got {v!r}")
    return tuple(_float(name, x, **limits) for x in v)


def _sampling_values(values: dict) -> dict:
    """The ``sampling`` section's values, checked by key as the other sections check theirs
    (``CubeSampling`` is frozen, checks only how its values relate, and keeps what it is
    given: lists from YAML/JSON become tuples here)."""
    from core.prompts import PROMPT_KINDS

    out = dict(values)
    for k in _SAMPLING_PROBABILITIES:
        if k in out:
            out[k] = _float(f"sampling.{k}", out[k], lo=0.0, hi=1.0)
    for k in _SAMPLING_NON_NEGATIVE:
        if k in out:
            out[k] = _float(f"sampling.{k}", out[k], lo=0.0)
    if "default_spacing_mm" in out:
        out["default_spacing_mm"] = _float(
            "sampling.default_spacing_mm", out["default_spacing_mm"], lo=0.0, lo_open=True
        )
    for k in ("max_refine_clicks", "max_self_rounds"):
        if k in out:
            out[k] = _int(f"sampling.{k}", out[k], lo=1)
    if "fill_range" in out:
        out["fill_range"] = _float_tuple("sampling.fill_range", out["fill_range"], n=2)
    if "prompt_kinds" in out:
        kinds = _str_tuple("sampling.prompt_kinds", out["prompt_kinds"])
        unknown = sorted(set(kinds) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(
                f"sampling.prompt_kinds: unknown kinds {unknown}; valid: {', '.join(PROMPT_KINDS)}"
            )
        out["prompt_kinds"] = kinds
    if "prompt_probs" in out:
        out["prompt_probs"] = _float_tuple("sampling.prompt_probs", out["prompt_probs"], lo=0.0)
    if out.get("classes") is not None:
        c = out["classes"]
        out["classes"] = tuple(
            _int("sampling.classes", k, lo=1) for k in (c if isinstance(c, (list, tuple)) else [c])
        )
        if not out["classes"]:
            raise ValueError("sampling.classes must name at least one class (null: all classes)")
    return out


@dataclass
class TrainConfig:
    """A whole training run. See the module docstring for the YAML form."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    loss: LossSection = field(default_factory=LossSection)
    lora: LoraSection = field(default_factory=LoraSection)
    sampling: CubeSampling = field(default_factory=CubeSampling)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"{name} must be a {cls.__name__}, got {type(getattr(self, name))}"
                )
        crop = self.data.preprocess_crop_size
        if crop is not None and crop[0] != self.model.view_size:
            # The crop size is the model's view size; ModelConfig re-validates it (patch).
            self.model = replace(self.model, view_size=crop[0])
        if self.lora.enabled and self.training.init_checkpoint == INIT_RANDOM:
            raise ValueError(
                "lora.enabled needs a trained base model: set training.init_checkpoint to a "
                ".safetensors or .pt file (or leave it unset for the shipped base), not 'random'"
            )

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        return json.loads(json.dumps({name: asdict(getattr(self, name)) for name in _SECTIONS}))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from nested dicts; missing sections and keys take their defaults."""
        if not isinstance(d, dict):
            raise ValueError(
                f"a training config must be a mapping of sections, got {type(d).__name__}"
            )
        unknown = sorted(set(d) - set(_SECTIONS))
        if unknown:
            raise ValueError(
                f"unknown config section(s) {unknown}; valid sections: {', '.join(_SECTIONS)}"
            )
        kwargs = {}
        for name, section_cls in _SECTIONS.items():
            values = d.get(name) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a mapping, got {values!r}")
            valid = [f.name for f in fields(section_cls)]
            bad = sorted(set(values) - set(valid))
            if bad:
                raise ValueError(
                    f"unknown config key(s) {', '.join(f'{name}.{k}' for k in bad)}; "
                    f"valid keys of {name}: {', '.join(valid)}"
                )
            if section_cls is CubeSampling:
                values = _sampling_values(values)
            try:
                kwargs[name] = section_cls(**values)
            except TypeError as exc:  # a wrong type reaching a section without its own checks
                raise ValueError(f"config section {name}: {exc}") from None
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str, object]:
    """``"training.epochs=50"`` -> ``("training", "epochs", 50)``; the value is read as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ValueError(
            f"override {text!r} must look like section.key=value (sections: {', '.join(_SECTIONS)})"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return parts[0], parts[1], value


# The recipes shipped with the package (the repository's configs/ links here).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the shipped training configs (``lora_headneck``, ...)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """A YAML file, or the name of a shipped config (``lora_headneck`` or
    ``lora_headneck.yaml``; ``configs/lora_headneck.yaml`` works from any folder too).

    Raises
    ------
    ValueError
        Neither a file nor a shipped config; the message lists the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name if path.parent in (Path(), Path("configs")) else None
    if name is not None:
        shipped = SHIPPED_CONFIGS / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
        if shipped.is_file():
            return shipped
    raise ValueError(
        f"{path}: config file not found (shipped configs: {', '.join(shipped_configs())})"
    )


def load_config(yaml_path: str | os.PathLike | None = None, overrides=()) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply dotted overrides.

    Parameters
    ----------
    yaml_path : a YAML file of sections (see the module docstring), or None for the defaults
    overrides : ``"section.key=value"`` strings applied in order (later ones win)

    Raises
    ------
    ValueError
        The file is missing or not YAML, a section or key is unknown (the message lists the
        valid ones), or a value is out of range.
    """
    import yaml

    d: dict = {}
    if yaml_path is not None:
        path = resolve_config(yaml_path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a valid YAML file ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config must be a mapping of sections")
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in _SECTIONS:
            raise ValueError(
                f"override {text!r}: unknown section {section!r}; "
                f"valid sections: {', '.join(_SECTIONS)}"
            )
        valid = [f.name for f in fields(_SECTIONS[section])]
        if key not in valid:
            raise ValueError(
                f"override {text!r}: unknown key {section}.{key}; "
                f"valid keys of {section}: {', '.join(valid)}"
            )
        if d.get(section) is None:  # absent, or an empty "section:" line in the YAML
            d[section] = {}
        sec = d[section]
        if not isinstance(sec, dict):
            raise ValueError(f"config section {section!r} must be a mapping")
        sec[key] = value
    if yaml_path is not None:
        try:
            return TrainConfig.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{yaml_path}: {exc}") from None
    return TrainConfig.from_dict(d)
