"""binder/ installs what the notebooks need, the way repo2docker (mybinder.org) installs it.

repo2docker copies the repository into the image and, from its root, runs
``pip install --no-cache-dir -r binder/requirements.txt`` in the environment JupyterLab runs
in, then ``binder/postBuild`` if there is one. This test does the same in a clean venv
(no system site-packages) on a copy of the repository, then imports nbqueue and ipywidgets
there, checks the widgets' lab extension landed in the venv, and runs a task round trip.
It downloads from the package index (a pip cache makes it ~20 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
# What a clone of the repository does not hold, and what must not leak into the copy.
NOT_IN_REPO = shutil.ignore_patterns(
    ".git", ".venv", "venv", "test-artifacts", ".hypothesis", ".pytest_cache", "__pycache__",
    ".nbqueue", "build", "dist", "*.egg-info", "docs")



def _clean_env(venv: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not key.startswith("NBQUEUE_")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)} exited with {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done.stdout


@pytest.mark.timeout(600)
def test_binder_environment_runs_nbqueue(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=NOT_IN_REPO)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _clean_env(venv)
    python = str(venv / "bin" / "python")

    requirements = repo / "binder" / "requirements.txt"
    if requirements.exists():
        # --no-compile: the test checks what is installed, not pip's bytecode of pandas
        _run([python, "-m", "pip", "install", "--quiet", "--no-compile", "-r",
              "binder/requirements.txt"],
             cwd=repo, env=env, timeout=480)
    post_build = repo / "binder" / "postBuild"
    if post_build.exists():
        _run(["bash", "binder/postBuild"], cwd=repo, env=env, timeout=300)

    check = textwrap.dedent("""
        import json, sys
        import ipywidgets, nbqueue
        nbqueue.configure(directory=sys.argv[1])
        task_id = nbqueue.async_task("math.copysign", 2, -2, sync=True)
        square = nbqueue.async_task(lambda x: x * x, 7, sync=True)
        print(json.dumps({
            "nbqueue": nbqueue.__file__,
            "ipywidgets": ipywidgets.__version__,
            "copysign": nbqueue.result(task_id),
            "square": nbqueue.result(square),
            "success": nbqueue.fetch(task_id).success,
        }))
    """)
    # Run outside the copy, so the import can only come from what pip installed.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    found = json.loads(_run([python, "-c", check, str(tmp_path / "store")],
                            cwd=outside, env=env, timeout=120).strip().splitlines()[-1])
    assert Path(found["nbqueue"]).is_relative_to(venv), found
    assert int(found["ipywidgets"].split(".")[0]) >= 8, found
    assert found["copysign"] == -2.0 and found["square"] == 49 and found["success"], found
    # The prebuilt lab extension that makes the widgets render in JupyterLab, no build.
    manager = venv / "share" / "jupyter" / "labextensions" / "@jupyter-widgets"
    assert (manager / "jupyterlab-manager" / "package.json").exists()
    # nbqueue's side panel and the server extension behind it, from the wheel's data files
    panel = venv / "share" / "jupyter" / "labextensions" / "nbqueue-labextension"
    assert (panel / "package.json").exists() and list((panel / "static").glob("*.js"))
    config = venv / "etc" / "jupyter" / "jupyter_server_config.d" / "nbqueue.json"
    assert json.loads(config.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"nbqueue.dashboard": True}}}
