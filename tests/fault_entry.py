"""`python tests/fault_entry.py ARGS...`: proqha's CLI with one rank made to fail right after it joins the
process group (the rank named by PROQHA_TEST_FAULT_RANK), for the distributed tests. Production code
carries no such hook."""

from __future__ import annotations

import os

from proqha import distributed
from proqha.cli.app import main

_setup = distributed.setup


def _failing_setup() -> None:
    _setup()
    if distributed.rank() == int(os.environ["PROQHA_TEST_FAULT_RANK"]):
        raise RuntimeError(f"injected failure on rank {distributed.rank()}")


distributed.setup = _failing_setup

if __name__ == "__main__":
    main()
