"""The layering of ``shared/design.md`` holds: import-linter's contracts (``[tool.importlinter]``) are kept.

``.ci/run`` also runs ``lint-imports``; running it here makes a plain ``pytest`` catch a broken layer too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

try:
    from importlinter.cli import lint_imports
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"import-linter is not installed ({exc})", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    try:
        status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        # import-linter configures logging and so disables every logger that exists; later tests read
        # idhub's log records (caplog), so they are switched back on.
        for logger in logging.root.manager.loggerDict.values():
            if isinstance(logger, logging.Logger):
                logger.disabled = False
    assert status == 0, capsys.readouterr().out
