"""`make lab`, checked headless: JupyterLab from this environment starts, serves its page, offers the
`dtlib` kernel that `make install` registers (running this environment's Python), and a kernel
started from it over the server's REST and websocket API imports this checkout's dtlib. Also: every
study notebook asks for that kernel, so papermill, nbval and JupyterLab all run them in this
environment rather than in whatever `python3` kernel a machine happens to have."""
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
KERNELSPEC = {"name": "dtlib", "display_name": "Python (dtlib)", "language": "python"}
STARTUP_TIMEOUT = 60
CODE = "import dtlib, sys; print(dtlib.__file__); print(sys.executable)"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(base, token, path, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw and "json" in resp.headers.get("Content-Type", "") else raw)


def _wait_until_up(proc, base, token, log):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            if _request(base, token, "/api/status")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer /api/status within {STARTUP_TIMEOUT} s:\n{log.read_text()[-4000:]}")


async def _execute(ws_url, code):
    """One execute_request on the shell channel; the reply and the stdout it caused."""
    conn = await websocket_connect(ws_url)
    try:
        msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
        await conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                       "username": "test_lab", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        reply, idle, stdout, errors = None, False, [], []
        # shell and iopub are separate streams: output may trail the reply, so also wait for iopub's
        # idle, which the kernel sends after all of this request's output
        while reply is None or not idle:
            raw = await conn.read_message()
            if raw is None:
                raise AssertionError(f"kernel websocket closed before the reply; stdout so far: {stdout}")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_reply":
                reply = content
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "stream" and content["name"] == "stdout":
                stdout.append(content["text"])
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))
        return reply, "".join(stdout), errors
    finally:
        conn.close()


def test_jupyterlab_serves_the_dtlib_kernel_and_it_imports_this_checkout(tmp_path):
    port, token = _free_port(), secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # own config/runtime/data dirs: the user's settings, servers and `--user` kernels can neither
    # break nor rescue the test, so it sees only what `make install` put into the environment
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), IPYTHONDIR=str(tmp_path / "ipython"))
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        # root_dir outside the checkout: the kernel must find dtlib as installed, not via its cwd;
        # --allow-root: CI containers often run as root, which the server otherwise refuses
        proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                                 f"--port={port}", "--ServerApp.port_retries=0", "--allow-root",
                                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}"],
                                stdout=err, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    kernel_id = None
    try:
        _wait_until_up(proc, base, token, log)
        assert _request(base, token, "/lab")[0] == 200, "JupyterLab's page is not served"

        specs = _request(base, token, "/api/kernelspecs")[1]["kernelspecs"]
        if "dtlib" not in specs:
            pytest.fail(f"no 'dtlib' kernel in this environment (only {sorted(specs)}): run `make install`, "
                        "which registers it with `ipykernel install --sys-prefix --name dtlib`")
        spec = specs["dtlib"]["spec"]
        assert spec["display_name"] == KERNELSPEC["display_name"] and spec["language"] == "python"
        # a kernel running another Python would import another dtlib, or none
        assert Path(spec["argv"][0]).parent == Path(sys.executable).parent, spec["argv"]

        status, kernel = _request(base, token, "/api/kernels", "POST", {"name": "dtlib"})
        assert status == 201, kernel
        kernel_id = kernel["id"]
        ws_url = f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}&token={token}"
        reply, stdout, errors = asyncio.run(asyncio.wait_for(_execute(ws_url, CODE), STARTUP_TIMEOUT))
        assert reply["status"] == "ok", errors or reply
        dtlib_file, executable = stdout.splitlines()
        assert Path(dtlib_file).resolve().is_relative_to((ROOT / "dtlib").resolve()), dtlib_file
        assert Path(executable).parent == Path(sys.executable).parent, executable
    finally:
        try:
            if kernel_id is not None and proc.poll() is None:
                _request(base, token, f"/api/kernels/{kernel_id}", "DELETE")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_every_study_notebook_asks_for_the_dtlib_kernel():
    paths = sorted((ROOT / "notebooks").glob("0*.ipynb"))
    assert paths
    for path in paths:
        spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
        assert dict(spec) == KERNELSPEC, f"{path.name}: {dict(spec)}"
