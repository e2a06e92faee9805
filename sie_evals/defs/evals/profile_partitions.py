"""Which profiles of a model config are Dagster partitions of their own (a partition rule, not an engine
one: it decides the model keys of the eval assets)."""

from sie_evals.lib.config.model_config import ModelConfig, OutputType


def partition_profiles(config: ModelConfig) -> list[str]:
    """Profiles evaluated as Dagster partitions of their own: every non-default profile whose output is
    not plain dense (a regression can hit one output type and not the others). The default profile is
    the bare model key, whatever its output."""
    default = config.resolve_profile("default").model_dump(exclude={"name"})
    out = []
    for name in config.profile_names:
        profile = config.resolve_profile(name)
        same_as_default = profile.model_dump(exclude={"name"}) == default  # e.g. `sparse` naming the default
        if name != "default" and not same_as_default and (profile.output != OutputType.dense or profile.muvera):
            out.append(name)
    return out
