"""Shared code of the monai-genaug bundles: data, samplers, uncertainty, filtering, handlers, metrics and io."""
