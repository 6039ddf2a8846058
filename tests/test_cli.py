"""The command line as users run it."""

import subprocess
import sys

import pytest
from astropy.table import Table

from fitax.cli import main


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    for command in ("demo", "gamma", "phot"):
        assert command in text


@pytest.mark.slow  # `make demo` runs it too; CI runs it with `make test-slow`
def test_demo_writes_results_and_plots(tmp_path):
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "fitax.cli", "demo", "--out", str(out), "--sources", "3", "--seed", "2"],
        capture_output=True, text=True, check=True,
    )
    assert "converged=True" in completed.stdout
    table = Table.read(out / "demo_results.ecsv")
    assert len(table) == 16 and {"name", "value", "error", "true_value"} <= set(table.colnames)
    # the fitted values are near the simulated truth
    free = ~table["frozen"]
    pulls = (table["value"][free] - table["true_value"][free]) / table["error"][free]
    assert max(abs(pulls)) < 5
    for name in ("demo_maps.png", "demo_pulls.png"):
        assert (out / name).stat().st_size > 10_000
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_bad_arguments_exit_with_a_message(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--sources", "0"])
    assert "--sources must be at least 1" in capsys.readouterr().err
