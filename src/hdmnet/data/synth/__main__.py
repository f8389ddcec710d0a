"""``python -m hdmnet.data.synth OUT_DIR [--seed N]``: write the embedded archives."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from hdmnet.data.synth.config import SynthConfig
from hdmnet.data.synth.generate import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=SynthConfig.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = generate(args.out_dir, dataclasses.replace(SynthConfig(), seed=args.seed))
    print(json.dumps(manifest["archives"], indent=2))


if __name__ == "__main__":
    main()
