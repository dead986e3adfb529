"""dltrain: train image classifiers from YAML configs.

Importing the package must stay cheap: it does not import torch.
"""

__version__ = "0.1.0"
