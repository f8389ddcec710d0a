"""Every setting does something: each key of the parameter schema is read by the code.

A key counts as read when the package accesses it as an attribute of the typed parameters
(``params.model.bf16``, ``getattr(params.meta, dataset).lr``, ``self.kshot_shots``: its last name
after a dot, not torch's own attributes of the same name), or when a job identity depends on it
(``identity.STAGE_KEYS``, read through ``identity.lookup``).
"""

from __future__ import annotations

import re
from pathlib import Path

from hdmnet import config
from hdmnet.identity import STAGE_KEYS

SRC = Path(__file__).resolve().parents[1] / "src" / "hdmnet"


def test_every_schema_key_is_read_by_the_code():
    code = "\n".join(path.read_text() for path in SRC.rglob("*.py"))
    tracked = {
        key.format(dataset=dataset)
        for keys in STAGE_KEYS.values()
        for key in keys
        for dataset in config.DATASETS
    }
    unread = []
    for key in config.leaf_keys(config.schema()):
        parts = key.split(".")
        if any(key == t or key.startswith(t + ".") for t in tracked):
            continue
        # params.meta.pascal.lr is read as getattr(params.meta, dataset).lr: the last name.
        if re.search(rf"(?<!torch)\.{re.escape(parts[-1])}\b", code):
            continue
        unread.append(key)
    assert unread == [], f"schema keys no code reads: {unread}"
