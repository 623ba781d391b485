"""`make readme-test`: the README's quick start, run as written.

The blocks of README.md whose fence says `ci` run in order, from the
repository's root:

  ```sh ci-background   started in the background (`make run`): the next
                        blocks run once its output says the system runs
  ```sh ci              run with bash -euo pipefail; must exit 0
  ```python ci          run with .venv/bin/python (the README makes that
                        virtual environment), else python3; must exit 0

While the system runs, it also checks what a newcomer would hit: a second
`make run` refuses with a non-zero status and harms neither the first
system nor its logs. npm is kept off the PATH: `make run` must not need
it. At the end the background block must have exited cleanly, and the
services' logs of this run must hold no WARN or ERROR line.

Then the variant the README names, `make run BROKER=nats` (the change feeds
on a nats-server of its own): it starts, `make story` walks through the
story against it, `make stop` stops it, and its logs are as quiet.

Standard library only: it runs on a fresh machine's python3.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(sh|python) (ci|ci-background)\n(.*?)^```$", re.M | re.S)
START_BOUND = 1800  # seconds: a cold `make run` builds the four services first
BLOCK_BOUND = 600
RUNNING = "Agora is running"
LOGS = ROOT / "data" / "logs"


def say(message: str) -> None:
    print(f"[readme-test] {message}", flush=True)


def fail(message: str) -> None:
    say(f"FAILED: {message}")
    sys.exit(1)


def blocks(readme: str) -> list[tuple[str, str, str]]:
    found = [(m.group(1), m.group(2), m.group(3)) for m in FENCE.finditer(readme)]
    if not any(kind == "ci-background" for _, kind, _ in found):
        fail("README.md has no `sh ci-background` block to start the system with")
    return found


def without_npm(env: dict) -> dict:
    """A PATH on which npm and npx exist only to fail loudly."""
    shims = Path(tempfile.mkdtemp(prefix="agora-no-npm-"))
    for name in ("npm", "npx"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho '{name} was called, and make run must not need it' >&2\nexit 97\n")
        shim.chmod(0o755)
    return {**env, "PATH": f"{shims}{os.pathsep}{env['PATH']}"}


def log_sizes() -> dict:
    return {p.name: p.stat().st_size for p in LOGS.glob("*.log")} if LOGS.is_dir() else {}


def wait_running(process: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        if RUNNING in output.read_text(errors="replace"):
            return
        if process.poll() is not None:
            fail(f"the background block exited ({process.returncode}) before the system ran:\n"
                 + output.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    fail(f"the system did not run within {START_BOUND} s")


def run_block(language: str, code: str, env: dict) -> None:
    if language == "sh":
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        python = ROOT / ".venv" / "bin" / "python"
        command = [str(python) if python.exists() else "python3", "-c", code]
    result = subprocess.run(command, cwd=ROOT, env=env, timeout=BLOCK_BOUND, capture_output=True, text=True)
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        fail(f"exit status {result.returncode}:\n{result.stderr[-3000:]}")


def second_run_refuses(env: dict) -> None:
    """A second `make run` beside the first: a clear refusal, the first unharmed."""
    before = log_sizes()
    result = subprocess.run(["make", "run"], cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)
    if result.returncode == 0:
        fail("a second make run while one runs exited 0")
    if "already running" not in result.stderr:
        fail(f"a second make run did not say why it refused:\n{result.stderr[-2000:]}")
    after = log_sizes()
    shrunk = [name for name, size in before.items() if after.get(name, 0) < size]
    if shrunk:
        fail(f"a second make run truncated the running system's logs: {shrunk}")
    reason = next(line for line in result.stderr.splitlines() if "already running" in line)
    say(f"a second make run refused: {reason}")


def quiet_logs() -> None:
    """No WARN or ERROR in what the services logged in this run."""
    loud = []
    for log in sorted(LOGS.glob("*.log")):
        this_run = log.read_text(errors="replace").rsplit("== make run", 1)[-1]
        loud += [f"{log.name}: {line}" for line in this_run.splitlines() if " WARN " in line or " ERROR " in line]
    if loud:
        fail("the services logged warnings in a clean run:\n" + "\n".join(loud))
    say("the services' logs of this run hold no WARN or ERROR")


def on_jetstream(env: dict, scratch: Path) -> None:
    """`make run BROKER=nats`: the story against it, then `make stop`; quiet logs."""
    if shutil.which("nats-server") is None:
        fail("make run BROKER=nats needs nats-server (Debian: apt-get install nats-server)")
    output = scratch / "jetstream.log"
    with output.open("w") as sink:
        system = subprocess.Popen(["make", "run", "BROKER=nats"], cwd=ROOT, env=env, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_running(system, output)
        if "change feeds on NATS JetStream" not in output.read_text(errors="replace"):
            fail("make run BROKER=nats did not say its feeds are on JetStream")
        run_block("sh", "make story", env)
        run_block("sh", "make stop", env)
        status = system.wait(timeout=60)
        if status != 0:
            fail(f"make run BROKER=nats exited with {status}:\n" + output.read_text(errors="replace")[-3000:])
        quiet_logs()
        say("make run BROKER=nats runs the story on JetStream")
    finally:
        if system.poll() is None:
            os.killpg(system.pid, signal.SIGTERM)
            system.wait(timeout=60)


def main() -> None:
    os.chdir(ROOT)
    if (ROOT / "data" / "run.pid").exists():
        fail("a system started by make run may be running (data/run.pid): make stop first")
    env = without_npm(dict(os.environ))
    output = Path(tempfile.mkdtemp(prefix="agora-readme-")) / "background.log"
    background = None
    try:
        for language, kind, code in blocks((ROOT / "README.md").read_text()):
            say(f"{kind} {language}: {code.strip().splitlines()[0]}")
            if kind == "ci-background":
                with output.open("w") as sink:
                    background = subprocess.Popen(["bash", "-c", code], cwd=ROOT, env=env, stdout=sink,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
                wait_running(background, output)
                second_run_refuses(env)
            else:
                run_block(language, code, env)
        if background is None:
            fail("no block started the system")
        try:
            status = background.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail("the system was still running after the README's last block")
        if status != 0:
            fail(f"the background block exited with {status}:\n" + output.read_text(errors="replace")[-3000:])
        quiet_logs()
        say("the README's quick start works as written")
        on_jetstream(env, output.parent)
    finally:
        if background is not None and background.poll() is None:
            os.killpg(background.pid, signal.SIGTERM)
            background.wait(timeout=60)
        shutil.rmtree(output.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
