import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True)


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "Usage" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("medseg ")


def test_bad_usage_exits_2():
    r = run("no-such-verb")
    assert r.returncode == 2
