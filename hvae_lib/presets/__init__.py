"""Named presets: ``python -m hvae_lib.train --list-presets`` prints them.

Each model family registers its presets in its own module here: a tiny CPU preset (seconds, for
tests and smoke runs), the sizes used in the chapters, and the paper sizes. Presets inherit: a
child names its parent and the keys it changes (see :func:`hvae_lib.config.preset`).
"""
from . import vae  # noqa: F401
from . import lvae  # noqa: F401
from . import nvae  # noqa: F401
from . import vdvae  # noqa: F401
