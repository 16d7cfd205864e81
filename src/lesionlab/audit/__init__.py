"""Is the model looking at the lesion? A shortcut audit that needs no manual annotation.

    regions.py    the outer frame, a documented lesion mask (Otsu, central component), the skin colour
    artifacts.py  dark corners / vignette, strong border lines, a large dark or coloured frame
    measure.py    CAM mass in the frame and off the lesion; occlusions; metrics by artifact and column
    figures.py    the shares by outcome and the off-lesion gallery (through plots.py)
    summary.py    the audit in words and tables (audit.md, report, compare; no torch)
    command.py    `lesionlab audit RUN [INPUT]`, the audit every train run writes, and recording it
"""
from .measure import Audit, AuditSettings, audit_images

__all__ = ["Audit", "AuditSettings", "audit_images"]
