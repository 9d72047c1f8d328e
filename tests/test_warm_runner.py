"""The tests' CLI runner forks from a warm interpreter (tests/helpers/warm.py): each run must still be a process
of its own, as `python SCRIPT` would be -- environment, folder, argv, output, exit status and signals."""
import os
import subprocess
import sys

from helpers import _run, start_module


def _script(tmp_path, body: str):
    path = tmp_path / "child.py"
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_a_run_has_its_own_environment_argv_output_and_exit_status(tmp_path):
    script = _script(tmp_path, "import os, sys\nprint(os.environ.get('EQA_PROBE'), sys.argv[1:], os.getppid())\n"
                               "print('問題', file=sys.stderr)\nsys.exit(3)\n")
    out = _run([script, "a", "b=c"], {"EQA_PROBE": "here"})
    probe, args, _ = out.stdout.split(" ", 2)
    assert (out.returncode, probe, args, out.stderr) == (3, "here", "['a',", "問題\n")
    assert "EQA_PROBE" not in os.environ  # set in the child only
    again = _run([script], None)
    assert again.stdout.startswith("None [] ")  # nothing left over from the run before


def test_a_run_killed_by_a_signal_reports_it_as_subprocess_does(tmp_path):
    script = _script(tmp_path, "import os, signal\nprint('before', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    out = _run([script], None)
    assert out.returncode == -9 and out.stdout == "before\n"
    cold = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert cold.returncode == out.returncode


def test_an_uncaught_exception_and_atexit_behave_as_in_a_fresh_interpreter(tmp_path):
    script = _script(tmp_path, "import atexit\natexit.register(lambda: print('atexit ran'))\nraise ValueError('x')\n")
    out = _run([script], None)
    cold = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (cold.returncode, cold.stdout) == (1, "atexit ran\n")
    assert out.stderr.strip().endswith("ValueError: x") and cold.stderr.strip().endswith("ValueError: x")


def test_a_run_whose_hub_settings_differ_imports_transformers_with_its_own(tmp_path):
    """transformers and huggingface_hub read HF_HOME, HF_ENDPOINT and proxies when imported: a run that sets its
    own must not fork from the server that imported them with the tests' settings."""
    script = _script(tmp_path, "import sys\nfrom helpers.warm import HF_FAMILY\n"
                               "warm = any(name in sys.modules for name in HF_FAMILY)\n"
                               "project = 'extractive_qa.recipe' in sys.modules\nimport transformers\n"
                               "from huggingface_hub import constants\n"
                               "print(warm, project, constants.HF_HOME, constants.ENDPOINT)\n")
    own = _run([script], {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://mirror.invalid"})
    assert own.stdout.split() == ["False", "True", str(tmp_path / "hf"), "http://mirror.invalid"], own.stderr[-2000:]
    default = _run([script], None)
    warm, project, home, endpoint = default.stdout.split()
    assert (warm, project) == ("True", "True") and home != str(tmp_path / "hf") and endpoint != "http://mirror.invalid"


def test_the_base_interpreter_refuses_the_hub_libraries_while_it_imports_the_project():
    """A project module that imported transformers at its top would be skipped there, not warm it for everyone."""
    import pytest

    from helpers.warm import _RefuseHF

    for name in ("transformers", "huggingface_hub.constants", "accelerate", "tokenizers"):
        with pytest.raises(ImportError):
            _RefuseHF().find_spec(name)
    assert _RefuseHF().find_spec("torch") is None


def test_runs_started_beside_each_other_run_at_once_and_report_their_own_ends(tmp_path):
    """``start_module``: two runs at once (each waits until the other has started: one after the other, the first
    would never end), then each one's output and exit status -- a signal's too."""
    (tmp_path / "meet.py").write_text(
        "import pathlib, sys, time\nhere, other = (pathlib.Path(sys.argv[1]) / n for n in sys.argv[2:4])\n"
        "here.touch()\nwhile not other.exists():\n    time.sleep(0.01)\nprint('met', sys.argv[2])\n"
        "sys.exit(int(sys.argv[4]))\n", encoding="utf-8")
    (tmp_path / "killed.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path)}
    runs = [start_module("meet", str(tmp_path), "a", "b", "0", env=env),
            start_module("meet", str(tmp_path), "b", "a", "3", env=env), start_module("killed", env=env)]
    results = [run.wait(timeout=120) for run in runs]
    assert [(r.returncode, r.stdout) for r in results] == [(0, "met a\n"), (3, "met b\n"), (-9, "")]


def test_the_forked_hub_server_alone_holds_its_channel(tmp_path):
    """The ``hf`` server is forked from ``base`` and talks over a socket: the runs it forks let go of it, so the test
    side reads the server's end when the server ends -- even while a run it started beside others goes on."""
    import signal

    from helpers import _env, _WarmInterpreter

    release = tmp_path / "release"
    script = _script(tmp_path, f"import pathlib, time\nend = time.monotonic() + 120\n"
                               f"while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < end:\n"
                               f"    time.sleep(0.05)\n")
    folder = tmp_path / "run"
    folder.mkdir()
    run = _WarmInterpreter.start([script], _env(None), folder)
    server = _WarmInterpreter.procs["hf"]
    os.kill(server.pid, signal.SIGKILL)
    server._channel.settimeout(30)  # a channel the run still held would keep this read waiting: a TimeoutError
    try:
        assert server.stdout.readline() == ""
    finally:
        release.touch()
    assert run.wait(timeout=120).returncode == 0 and server.poll() is not None
