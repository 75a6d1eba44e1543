"""DnCShap explanations (PAPER.md, "DnCShap"): the pure-JAX core, speech and figures.

The driver (`explain.run`) imports the model and pipeline packages, so it is
not imported here: `import explain` stays free of the rest of the project.
"""

from explain.dncshap import average_explanations
from explain.dncshap import dncshap
from explain.dncshap import dncshap_batch
from explain.dncshap import Explanation
from explain.dncshap import FactorizedFn
from explain.dncshap import num_encodings
from explain.dncshap import num_evaluations
from explain.dncshap import region_boxes
from explain.dncshap import Regions
