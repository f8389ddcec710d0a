"""Generated data sets in the exact layout of the real archives.

``generate(out_dir, SynthConfig(...))`` writes ``VOCtrainval_11-May-2012.tar``, ``benchmark.tgz``,
``train_noval.txt``, ``train2014.zip``, ``val2014.zip``, ``annotations_trainval2014.zip`` and
``manifest.json`` (sizes, MD5 and SHA-256 of each file).
"""

from hdmnet.data.synth.config import SynthConfig, synth_config
from hdmnet.data.synth.generate import FILES, MANIFEST, generate

__all__ = ["FILES", "MANIFEST", "SynthConfig", "generate", "synth_config"]
