"""minivae/runner.py: grids of real training runs (scripts/beta_sweep.py over train_autoencoder.py,
tiny models on the bundled digits) with --jobs 2, on a Dask LocalCluster inside the test, with a
run that fails in the middle, and stopped by SIGTERM and Ctrl-C sent to a real study process.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minivae import runner, workers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the sweep imports train_autoencoder as a sibling script
import beta_sweep  # noqa: E402

TINY = ["--betas", "1", "4", "--seeds", "1", "2", "--dataset", "mnist", "--no-download", "--limit", "300",
        "--epochs", "1", "--hidden", "16", "--latent", "3", "--batch-size", "100", "--no-plots"]


def test_jobs_2_trains_the_grid_and_a_restart_reads_the_results_instead_of_training(tmp_path, capsys):
    result = beta_sweep.main(TINY + ["--jobs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    starts = [i for i, line in enumerate(printed) if line.startswith("start ")]
    finished = [i for i, line in enumerate(printed) if " finished in " in line]
    assert len(starts) == len(finished) == 4 and starts[1] < finished[0]  # two runs at once
    assert [row["seeds"] for row in result["rows"]] == [2, 2] and not result["partial"]
    assert "| 4 | 2 |" in (tmp_path / "sweep.md").read_text()
    assert result["runs"]["beta4-seed1"]["beta_norm"] == pytest.approx(4 * 3 / 784)  # beta * latent / pixels
    for name in ("beta1-seed1", "beta1-seed2", "beta4-seed1", "beta4-seed2"):
        config = json.loads((tmp_path / name / "metrics.json").read_text())["config"]
        assert (config["beta"], config["seed"]) == (float(name[4]), int(name[-1]))
        assert "wrote" in (tmp_path / name / "train.log").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")}

    again = beta_sweep.main(TINY + ["--jobs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "start " not in printed and printed.count("kept beta") == 4
    assert again["rows"] == result["rows"] and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    other = [flag if flag != "300" else "400" for flag in TINY]  # --limit 400: not the runs that folder holds
    with pytest.raises(SystemExit, match=r"beta1-seed1 holds a run of other flags \(.*--limit 300 .*\): give the "
                                         "study another --out, or delete that folder"):
        beta_sweep.main(other + ["--out", str(tmp_path)])


def test_the_sweep_figure_plots_mig_and_reconstruction_against_beta(tmp_path):
    pytest.importorskip("matplotlib")
    import autoencoder_figures
    runs = {f"beta{b}-seed{s}": {"beta": b, "mig": 0.1 * b / (s + 1), "mig_posterior": 0.1 * b / s, "test_rec": 20.0 + b} for b in (1, 4) for s in (1, 2)}
    path = autoencoder_figures.sweep_figure(runs, tmp_path / "sweep.png")
    assert path.endswith("sweep.png") and (tmp_path / "sweep.png").stat().st_size > 1000


def test_children_get_one_blas_thread_and_this_minivae(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # a value the user set is kept
    env = workers.child_environment()
    assert (env["OPENBLAS_NUM_THREADS"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("1", "1", "3")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_a_dask_local_cluster_gives_the_same_table_as_local_processes(tmp_path, capsys):
    distributed = pytest.importorskip("distributed", reason='the optional extra: pip install -e ".[cluster]"')
    local = beta_sweep.main(TINY + ["--jobs", "2", "--out", str(tmp_path / "local")])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:  # in this process: no network
        remote = beta_sweep.main(TINY + ["--dask", cluster.scheduler_address, "--out", str(tmp_path / "dask")])
    printed = capsys.readouterr().out.splitlines()
    sent = printed.index(next(line for line in printed if line.startswith("sending 4 runs to ")))
    starts = [i for i, line in enumerate(printed) if line.startswith("start ") and i > sent]
    first_finished = next(i for i, line in enumerate(printed) if " finished in " in line and i > sent)
    # one run per worker thread: two go out at once, the others only as runs finish
    assert len(starts) == 4 and sum(i < first_finished for i in starts) == 2
    untimed = lambda rows: [{k: v for k, v in row.items() if k not in ("train_seconds", "train_cpu_seconds")}
                            for row in rows]  # times differ
    assert untimed(remote["rows"]) == untimed(local["rows"]) and not remote["partial"]
    for name in ("beta1-seed1", "beta4-seed2"):  # every file of the run came back into the local --out
        assert {p.name for p in (tmp_path / "dask" / name).iterdir()} == {
            "checkpoint.npz", "metrics.json", "run.json", "train.log"}


def test_dask_without_the_extra_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets when not installed
    with pytest.raises(SystemExit) as stop:
        beta_sweep.parse_args(["--out", "unused", "--dask", "tcp://127.0.0.1:8786"])
    assert stop.value.code == 2
    assert 'error: --dask needs dask.distributed, an optional extra: pip install -e ".[cluster]"' in capsys.readouterr().err


def test_a_run_failing_mid_grid_is_reported_and_the_others_finish(tmp_path, capsys):
    script = tmp_path / "toy_run.py"  # a training script in miniature: fails when told to, else writes metrics
    script.write_text("import json, sys, time\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                      "if '--fail' in sys.argv:\n    print('epoch 1 ...')\n    time.sleep(0.5)\n"
                      "    raise RuntimeError('the disk is on fire')\n"
                      "json.dump({'value': int(sys.argv[1])}, open(out + '/metrics.json', 'w'))\n")
    specs = [runner.Spec(f"run{i}", str(script), [str(i)] + ["--fail"] * (i == 1), str(tmp_path / f"run{i}"))
             for i in range(4)]
    with runner.Grid(jobs=2) as grid:
        metrics = grid.run(specs)
        assert {name: m["value"] for name, m in metrics.items()} == {"run0": 0, "run2": 2, "run3": 3}
        assert grid.partial and list(grid.failed) == ["run1"]
        with pytest.raises(SystemExit) as stop:
            grid.finish("python study.py --out x")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert f"run1 failed (exit code 1): python {script} 1 --fail --out {tmp_path / 'run1'}" in err
    assert "RuntimeError: the disk is on fire" in err and "3 of 4 runs finished; 1 failed" in err


def _processes_naming(text):
    """PIDs of the processes whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # ended while we looked
            pass
    return pids


def stop_study(script, flags, folder, ready, signum):
    """Start scripts/`script` with `flags` as a real process; once ready() holds, send it `signum`.

    Checks that every process of the study (whatever names `folder` on its command line) is gone
    within 15 seconds; returns the study's exit code and its stderr.
    """
    study = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *flags], text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready() and time.monotonic() < deadline:
        assert study.poll() is None, study.communicate()
        time.sleep(0.05)
    assert len(_processes_naming(str(folder))) >= 2  # the study and a run
    study.send_signal(signum)
    t0 = time.monotonic()
    err = study.communicate(timeout=30)[1]
    while _processes_naming(str(folder)) and time.monotonic() < t0 + 15:
        time.sleep(0.05)
    assert not _processes_naming(str(folder)), "a run outlived the study"
    assert "Traceback" not in err and "Continue with the same command" in err
    return study.returncode, err


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C (SIGINT)")])
def test_a_stop_signal_mid_grid_stops_every_run_keeps_results_and_the_same_command_resumes(
        tmp_path, capsys, signum, code, name):
    flags = TINY[:-6] + ["--epochs", "40", "--hidden", "16", "--latent", "3", "--batch-size", "100", "--no-plots",
                         "--jobs", "2", "--out", str(tmp_path)]

    def second_pair_started():  # mid-grid: a run of the second pair has saved its first epoch
        done = {p.parent.name for p in tmp_path.glob("*/metrics.json")}
        return bool(({p.parent.name for p in tmp_path.glob("*/checkpoint.npz")} - done) & {"beta4-seed1", "beta4-seed2"})

    returncode, err = stop_study("beta_sweep.py", flags, tmp_path, second_pair_started, signum)
    assert returncode == code, err
    finished = int(re.search(rf"stopped by {re.escape(name)}: (\d) of 4 runs finished; stopped, keeping their "
                             "last checkpoints: ", err).group(1))
    done = {p.parent.name for p in tmp_path.glob("*/metrics.json")}  # a run in its last moments may have finished
    running = {p.parent.name for p in tmp_path.glob("*/checkpoint.npz")} - done
    assert finished == len(done) >= 1 and running
    assert "beta_sweep.py " + " ".join(flags) in err and "PARTIAL" in (tmp_path / "sweep.md").read_text()
    for run in running:  # each stopped run ends quietly (SIGTERM, whichever signal the study had) and keeps
        log = (tmp_path / run / "train.log").read_text()  # its last complete checkpoint
        assert "Traceback" not in log and (tmp_path / run / "checkpoint.npz").exists()
    assert any("stopped by SIGTERM in epoch" in (tmp_path / run / "train.log").read_text() for run in running)
    if signum == signal.SIGINT:
        return
    stamps = {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in done}
    result = beta_sweep.main(flags)  # the same command: finished runs read, stopped runs resumed
    printed = capsys.readouterr().out
    assert all(f"kept {run}: " in printed for run in done) and not result["partial"]
    assert all(f"start {run} (resuming its checkpoint)" in printed for run in running)
    assert {run: (tmp_path / run / "metrics.json").stat().st_mtime_ns for run in done} == stamps
    for run in running:
        assert "resumed from" in (tmp_path / run / "train.log").read_text()


@pytest.mark.parametrize("script, flags, table", [
    ("collapse_study.py", ["--toy-sentences", "160", "--epochs", "40", "--max-vocab", "100", "--embedding", "8",
                           "--hidden", "10", "--latent", "3", "--batch-size", "16", "--methods", "vanilla,bow,mdr"],
     "collapse.md"),
    ("compare_autoencoders.py", ["--quick", "--no-download", "--shapes-epochs", "1"], "comparison.md")])
def test_the_other_studies_stop_on_sigterm_too(tmp_path, script, flags, table):
    returncode, err = stop_study(script, flags + ["--out", str(tmp_path)], tmp_path,
                                 lambda: any(tmp_path.glob("*/checkpoint.npz")), signal.SIGTERM)
    assert returncode == 143 and "stopped by SIGTERM: " in err
    assert "PARTIAL" in (tmp_path / table).read_text()


def test_runs_whose_study_is_killed_outright_stop_themselves_and_keep_their_checkpoints(tmp_path):
    """kill -9 (or a closed terminal) leaves the study no time to stop its runs: each run sees that
    the process that started it has gone and stops as on SIGTERM, within a few seconds."""
    flags = TINY[:-6] + ["--epochs", "200", "--hidden", "16", "--latent", "3", "--batch-size", "100", "--no-plots",
                         "--jobs", "2", "--out", str(tmp_path)]
    study = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "beta_sweep.py"), *flags],
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob("*/checkpoint.npz")) and time.monotonic() < deadline:
        assert study.poll() is None
        time.sleep(0.05)
    runs = [pid for pid in _processes_naming(str(tmp_path)) if pid != study.pid]
    assert len(runs) == 2
    study.kill()
    study.wait()
    t0 = time.monotonic()
    while _processes_naming(str(tmp_path)) and time.monotonic() < t0 + 15:
        time.sleep(0.05)
    assert not _processes_naming(str(tmp_path)), "a run outlived its killed study"
    stopped = [p.parent for p in tmp_path.glob("*/checkpoint.npz") if not (p.parent / "metrics.json").exists()]
    assert stopped and all("stopped by SIGTERM in epoch" in (run / "train.log").read_text() for run in stopped)


def test_flags_are_checked_before_any_run_starts_and_a_finished_run_is_not_parsed(tmp_path):
    finished = runner.Spec("finished", "train.py", ["--flag-it-was-trained-with"], str(tmp_path / "finished"))
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "metrics.json").write_text("{}")
    todo = runner.Spec("todo", "train.py", ["--lr", "0.1"], str(tmp_path / "todo"))
    parsed = []
    runner.check_before_start([finished, todo], parsed.append)
    assert parsed == [["--lr", "0.1", "--out", str(tmp_path / "todo")]]
