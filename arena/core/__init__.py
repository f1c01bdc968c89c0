"""Layer 1, the plugin SDK: plugin bases, keys, parameters, registry, context,
protocols, data, models, training, statistics and the one verification step.
"""
