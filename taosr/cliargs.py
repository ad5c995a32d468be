"""An ``argparse.ArgumentParser`` whose usage errors are one-line :class:`~taosr.errors.TaosrError`s,
so a bad flag of ``taosr data ...`` or ``taosr sample`` reads like every other user error
(``taosr: error: ...``, exit 2) instead of a usage block."""
from __future__ import annotations

import argparse

from taosr.errors import TaosrError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise TaosrError(f"{self.prog}: {message} (see {self.prog} --help)")
