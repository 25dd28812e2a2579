"""openai/vdvae's model code, imported from a folder given on the command line (nothing of it is
copied into this project): shared by ``vdvae_side_by_side.py`` and ``vdvae_import_check.py``."""
from __future__ import annotations

import os
import sys
import warnings

OFFICIAL_FILES = ("vae.py", "vae_helpers.py", "hps.py")


def load_official_vdvae(src: str):
    """The official ``hps`` and ``vae`` modules from ``src``; exits with one sentence if a file is missing."""
    src = os.path.abspath(src)
    for f in OFFICIAL_FILES:
        if not os.path.isfile(os.path.join(src, f)):
            sys.exit(f"{f} not found in {src}; extract openai/vdvae's vae.py, vae_helpers.py and hps.py there.")
    sys.path.insert(0, src)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import hps
    import vae

    return hps, vae
