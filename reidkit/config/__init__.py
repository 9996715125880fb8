"""Typed experiment configuration (a package that imports nothing from the engine).

``schema``: every section a dataclass with its own ``check()``; ``typed``: coercion of plain
YAML values with errors naming the key; ``loader``: recipes, the ``_base_`` resolver and the one
override path. ``load_config(source, overrides)`` is the entry point.
"""

from __future__ import annotations

from reidkit.config.loader import (
    RECIPES_DIR,
    apply_overrides,
    config_from_dict,
    deep_merge,
    find_recipe,
    list_recipes,
    load_config,
    load_yaml,
    override_pairs,
    parse_overrides,
    parse_overrides_flat,
    resolve_bases,
    set_dotted,
)
from reidkit.config.options import describe_options, options_class, read_options, register_options
from reidkit.config.schema import (
    SPACES,
    Config,
    DataConfig,
    DatasetSpec,
    InputConfig,
    LossConfig,
    ModelConfig,
    SamplerConfig,
    SolverConfig,
    SourceConfig,
    TestConfig,
    UnsupervisedConfig,
)

__all__ = [  # alphabetical, case aside
    "apply_overrides",
    "Config",
    "config_from_dict",
    "DataConfig",
    "DatasetSpec",
    "deep_merge",
    "describe_options",
    "find_recipe",
    "InputConfig",
    "list_recipes",
    "load_config",
    "load_yaml",
    "LossConfig",
    "ModelConfig",
    "options_class",
    "override_pairs",
    "parse_overrides",
    "parse_overrides_flat",
    "read_options",
    "RECIPES_DIR",
    "register_options",
    "resolve_bases",
    "SamplerConfig",
    "set_dotted",
    "SolverConfig",
    "SourceConfig",
    "SPACES",
    "TestConfig",
    "UnsupervisedConfig",
]
