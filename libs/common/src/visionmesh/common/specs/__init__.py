"""Job specs checked the same way by the gateway (at intake) and the workers (before running).

Torch-free: the architecture catalogues the checks need are static data here, kept equal to
the installed Ultralytics and torchvision by the test suite.
"""

from __future__ import annotations
