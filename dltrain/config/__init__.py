"""The config: schema.py (its sections; data.py the data section's, section.py what each is),
reference.py (its keys and reference), reading.py (safe YAML), loading.py (read and check),
space.py (sweep grammar), changes.py (the overrides a checkpoint can take)."""

from dltrain.config.changes import check_changes
from dltrain.config.data import AugmentConfig, DataConfig, FakeDataConfig, MixupConfig, image_size
from dltrain.config.loading import (
    apply_overrides,
    from_dict,
    load_config,
    parse_yaml,
    read_config_file,
    set_key,
    validate,
)
from dltrain.config.reference import reference_markdown
from dltrain.config.schema import (
    CheckpointConfig,
    Config,
    EarlyStoppingConfig,
    EmaConfig,
    EvalConfig,
    FinetuneConfig,
    LoggingConfig,
    MlflowConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    SweepConfig,
    TrainConfig,
    WandbConfig,
    lower_is_better,
)
from dltrain.config.section import NormalizeStats, Section
from dltrain.config.space import SPACE_FORMS, Space, parse_space

__all__ = [
    "SPACE_FORMS", "AugmentConfig", "CheckpointConfig", "Config", "DataConfig",
    "EarlyStoppingConfig", "EmaConfig", "EvalConfig", "FakeDataConfig", "FinetuneConfig",
    "LoggingConfig", "MixupConfig", "MlflowConfig", "ModelConfig",
    "NormalizeStats", "OptimConfig", "ScheduleConfig", "Section", "Space", "SweepConfig",
    "TrainConfig", "WandbConfig", "apply_overrides", "check_changes", "from_dict", "image_size",
    "load_config", "lower_is_better", "parse_space", "parse_yaml", "read_config_file",
    "reference_markdown", "set_key", "validate",
]  # fmt: skip
