"""The `hearth` command as a user runs it: output, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # `hearth` in subprocesses, on the built packs


def hearth(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=300,
    )


def test_help_teaches(hearth_env: dict[str, str]) -> None:
    out = hearth("--help", env=hearth_env).stdout
    for cmd in ("chat", "embed", "run", "profiles", "models", "bench"):
        assert cmd in out
    assert "Example" in hearth("chat", "--help", env=hearth_env).stdout


def test_profiles_commands(hearth_env: dict[str, str]) -> None:
    listed = json.loads(hearth("profiles", "list", "--json", env=hearth_env).stdout)
    assert {"fridge-panel", "hub", "gpu-server"} <= {p["id"] for p in listed}
    assert "ram_mb: 1024" in hearth("profiles", "show", "fridge-panel", env=hearth_env).stdout
    detected = json.loads(hearth("profiles", "detect", "--json", env=hearth_env).stdout)
    assert detected["nearest"] and detected["generated"]["cpu"]["cores"] >= 1
    bad = hearth("profiles", "show", "toaster", env=hearth_env)
    assert (
        bad.returncode == 2
        and "unknown firmware profile 'toaster'" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def test_models_plan_differs_by_device(hearth_env: dict[str, str]) -> None:
    plans = {
        p: json.loads(hearth("models", "plan", "--profile", p, "--json", env=hearth_env).stdout)
        for p in ("fridge-panel", "hub", "gpu-server")
    }
    gen = {p: plans[p]["tasks"]["generate"] for p in plans}
    assert gen["fridge-panel"]["mode"] == "offload-only" and gen["fridge-panel"]["pack"] is None
    assert gen["hub"]["pack"] == "smollm2-135m-instruct@int4"
    assert gen["gpu-server"]["pack"] == "smollm2-135m-instruct@fp32"
    text = hearth("models", "plan", "--profile", "fridge-panel", env=hearth_env).stdout
    assert "offload-only" in text and "budget is 153 MB" in text


def test_models_list_and_verify(hearth_env: dict[str, str]) -> None:
    listed = json.loads(hearth("models", "list", "--json", env=hearth_env).stdout)
    assert {"smollm2-135m-instruct@int4", "all-minilm-l6-v2@fp32"} <= {p["pack_id"] for p in listed}
    ver = hearth("models", "verify", env=hearth_env)
    assert ver.returncode == 0 and "ok   smollm2-135m-instruct@int4" in ver.stdout
    bad = hearth("models", "build", "--variant", "int3", env=hearth_env)
    assert bad.returncode == 1 and "unknown variant 'int3'" in bad.stderr


def test_chat_streams_and_embed_prints_similarities(hearth_env: dict[str, str]) -> None:
    chat = hearth(
        "chat", "What is the capital of France? Answer in one sentence.", "--profile", "hub", env=hearth_env
    )
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout and "tok/s" in chat.stderr
    emb = hearth(
        "embed", "turn off the lights", "switch the lights off", "--profile", "hub", "--json", env=hearth_env
    )
    vectors = json.loads(emb.stdout)["vectors"]
    assert len(vectors) == 2 and len(vectors[0]) == 384


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("chat", "   ", "--profile", "hub"), 2, "empty prompt"),
        (
            ("chat", "hi", "--profile", "fridge-panel"),
            1,
            "'generate' cannot run on fridge-panel (offload-only)",
        ),
        (
            ("chat", "hi", "--profile", "hub", "--temperature", "9"),
            2,
            "--temperature 9: out of range, must be from 0 to 2",
        ),
        (("embed", "", "--profile", "hub"), 2, "text 0 is empty"),
    ],
)
def test_bad_input_gets_a_clear_error(
    hearth_env: dict[str, str], args: tuple[str, ...], code: int, message: str
) -> None:
    proc = hearth(*args, env=hearth_env)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr


def test_non_utf8_argument_is_rejected(hearth_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"edge_agent", b"chat", b"caf\xe9", b"--profile", b"hub"],
        capture_output=True,
        env=hearth_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert b"is not valid UTF-8 text (byte 0xe9" in proc.stderr and b"Traceback" not in proc.stderr


def test_run_demo_answers_chat_and_embedding(hearth_env: dict[str, str]) -> None:
    cfg = Path(__file__).resolve().parent.parent / "config" / "hub.toml"
    proc = hearth("run", "--config", str(cfg), "--demo", env={**hearth_env, "HEARTH_MESH__ENABLED": "false"})
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout and "cosine similarity" in proc.stdout
    assert "A máquina de lavar louça terminou às 14:32." in proc.stdout  # the demo's translation


def test_make_run_demo_offloads_the_fridge_chat_to_the_hub(hearth_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make run`: two agent processes, real pairing over the hub's embedded broker, offload, stream back."""
    import os
    import shutil

    repo = Path(__file__).resolve().parent.parent
    home = tmp_path / "home"
    (home).mkdir()
    from edge_agent.paths import hearth_home

    os.symlink(hearth_home().resolve() / "store", home / "store")
    env = {**hearth_env, "HEARTH_HOME": str(home)}
    for _ in range(2):  # the second run reuses the household and pairing
        proc = subprocess.run([sys.executable, "-m", "edge_agent", "demo"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "served by hub" in proc.stdout and "Paris" in proc.stdout, proc.stdout
        assert "(local)" in proc.stdout, proc.stdout  # embeddings stay on the fridge
        assert "14:32" in proc.stdout and "translate en→pt" in proc.stdout, proc.stdout
        assert " INFO " not in proc.stdout + proc.stderr, proc.stderr  # no agent log lines in the demo
    assert "paired the fridge panel" not in proc.stdout  # already paired on the first run
    assert (home / "demo" / "hub" / "root.json").stat().st_mode & 0o077 == 0
    shutil.rmtree(home / "demo")


def test_a_command_that_exits_with_a_code_makes_the_process_exit_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """click returns typer.Exit's code instead of exiting when not standalone: a `hearth models update`
    that failed to activate, or a fuzz campaign with failures, used to end with 0."""
    import typer

    from edge_agent.cli import run_app

    commands = typer.Typer()

    @commands.command()
    def fail() -> None:
        raise typer.Exit(3)

    @commands.command()
    def fine() -> None:
        pass

    monkeypatch.setattr(sys, "argv", ["t", "fail"])
    with pytest.raises(SystemExit) as exited:
        run_app(commands)
    assert exited.value.code == 3
    monkeypatch.setattr(sys, "argv", ["t", "fine"])
    run_app(commands)  # no SystemExit: success ends normally
