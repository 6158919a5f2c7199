"""Shared code of the monai-genaug bundles: sampling, generation, data, evaluation, filtering, handlers, metrics and io.

Importing it makes an uncaught error that MONAI's config parser wrapped end with its real cause
(:mod:`common.errors`).
"""

from common import errors

errors.install()
