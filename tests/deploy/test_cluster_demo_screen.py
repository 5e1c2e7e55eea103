"""``make cluster-demo`` keeps ``make demo``'s quiet screen (issue 24): the REST request log lines, the
embedded server's start-up and child processes' output go to OUT/cluster-demo.log; the screen shows the
progress lines (one per day) and the summary. The month itself is replaced here by a stand-in that makes
the same kinds of noise; tests/deploy/test_cluster.py runs the real one."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from returnledger_dev.cluster import demo


def test_cluster_demo_screen_is_quiet_and_the_rest_goes_to_its_log(tmp_path, capfd, monkeypatch):
    def noisy_month(scenario, out_dir, *, progress=print, **kwargs) -> dict:
        logging.getLogger("httpx").warning(
            'HTTP Request: GET http://127.0.0.1:1/api/v2/dags "HTTP/1.1 200 OK"'
        )
        print("pgserver: initdb, starting the embedded server")  # as the embedded server's start-up
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('airflow child says hi\\n')"])
        progress("2026-10-01 sync success, checks success")
        return {"seconds": 1.0}

    monkeypatch.setattr(demo, "run_cluster_scenario", noisy_month)
    monkeypatch.setattr(
        "returnledger_dev.demo.outputs.print_summary",
        lambda s, out=sys.stdout: print("== summary ==", file=out),
    )
    args = argparse.Namespace(
        scenario="s.json",
        out=str(tmp_path),
        no_faults=False,
        port=None,
        workers=2,
        mode="runs",
        no_rerun=False,
        root=None,
        name="demo",
    )
    assert demo._cmd_cluster_demo(args) == 0
    screen = capfd.readouterr()
    shown = screen.out + screen.err
    assert "2026-10-01 sync success" in shown and "== summary ==" in shown
    for noise in ("HTTP Request", "pgserver", "airflow child says hi"):
        assert noise not in shown, (noise, shown)
    log = (tmp_path / "cluster-demo.log").read_text()
    for noise in ("HTTP Request", "pgserver", "airflow child says hi"):
        assert noise in log, (noise, log)
