"""HDMNet, the PSPNet base learner and their backbones."""
