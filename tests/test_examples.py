"""The examples run as a user would run them: the scripted task, and the plugin package
installed with pip, discovered by the CLI, with its own tests passing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def test_scripted_task() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "scripted_task.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "-> functions.invoice_total" in proc.stdout
    assert "completed: The three invoices total 505.75." in proc.stdout
    assert "13 messages saved to" in proc.stdout


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The plugin installed by pip into its own folder, as `pip install` would for a user."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLES / "weather_plugin")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}"}


def test_plugin_is_discovered_by_the_cli(installed_plugin: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "harmony_agent", "tools"], env=installed_plugin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "functions.get_weather  Current temperature in a city." in proc.stdout
    assert "functions.get_forecast" in proc.stdout


def test_an_installed_plugin_also_named_with_tools_counts_once(
    installed_plugin: dict[str, str],
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harmony_agent", "tools", "--tools", "weather_plugin:TOOLS"],
        env=installed_plugin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("functions.get_weather ") == 1


def test_plugin_authors_tests_pass(installed_plugin: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(EXAMPLES / "weather_plugin" / "tests")],
        env=installed_plugin, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
