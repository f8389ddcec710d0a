"""What every training and evaluation job shares, below both stages: its processes and devices,
the prepared data it reads, the checks it makes before long work and the provenance it stamps on
its records. Its models come from ``HDMNet.from_config`` / ``PSPNet.from_config``."""
