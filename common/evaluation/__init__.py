"""The evaluation protocol shared by every method: does the augmentation help the downstream segmenter?

- :mod:`.protocol`: :func:`evaluate`, the whole protocol in one function;
- :mod:`.arms`: the arms (real, classic, synthetic, controls, method schemes) and what each is compared with;
- :mod:`.controls`: the control arms a method declares;
- :mod:`.runs`: training and scoring one arm with one seed, reused only when nothing that shaped it changed;
- :mod:`.quality`: generator quality (FID/KID, Real-Only, condition agreement, diversity);
- :mod:`.report`: summaries over seeds, paired differences, Markdown and the per-class figure;
- :mod:`.provenance`: reading synthetic sets and refusing those that leak held-out data.
"""

from __future__ import annotations

from .arms import CLASSIC, REAL, SEGMENTATION_CONFIG, Arm
from .protocol import evaluate, parse_schemes
from .provenance import LeakageError, check_provenance, load_synthetic_pairs
from .runs import PROTOCOL_VERSION, run_arm, score_segmenter, train_segmenter

__all__ = [
    "CLASSIC",
    "PROTOCOL_VERSION",
    "REAL",
    "SEGMENTATION_CONFIG",
    "Arm",
    "LeakageError",
    "check_provenance",
    "evaluate",
    "load_synthetic_pairs",
    "parse_schemes",
    "run_arm",
    "score_segmenter",
    "train_segmenter",
]
