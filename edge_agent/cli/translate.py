"""``hearth translate``: text, stdin or a file, on this device or a household peer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent import aio
from edge_agent.cli.common import (
    ConfigOpt,
    ProfileOpt,
    console,
    console_err,
    load_context,
    mesh_state_dir,
    open_hearth,
    setup_logging,
)
from edge_agent.engines.interfaces import TranslateRequest, TranslateResult
from edge_agent.errors import ConfigError

BATCH = 256  # texts per request: the request limit


def _read_inputs(texts: list[str] | None, file: Path | None) -> list[str]:
    if file is not None:
        try:
            raw = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--file {file}: no such file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--file {file}: not UTF-8 text (byte {exc.start})") from None
        return raw.splitlines()
    if not texts or texts == ["-"]:
        if sys.stdin.isatty():
            raise ConfigError("nothing to translate: give text, '-' for stdin, or --file")
        return sys.stdin.read().splitlines()
    return texts


def translate(
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Text to translate; several arguments are several texts. '-' reads stdin."),
    ] = None,
    source: Annotated[
        str, typer.Option("--from", "-f", help="Source language (ISO 639-1): en or pt.")
    ] = "en",
    target: Annotated[str, typer.Option("--to", "-t", help="Target language (ISO 639-1): pt or en.")] = "pt",
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Translate a file line by line (batch mode); blank lines kept."),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write translations here.")] = None,
    beam: Annotated[
        int | None,
        typer.Option(help="Beam size; 1 is greedy (default: [translate] beam_size, 1).", min=1, max=8),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with stats.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Ignore the mesh; run on this device only.")] = False,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Translate between English and Portuguese, privately (Bergamot tiny11 models, on ONNX Runtime).

    Paragraphs are split into sentences and put back together with their spacing. In batch mode every
    line is one text and the output has the same number of lines. With \\[mesh] enabled and this device
    paired, a device without the model (or a slower one) hands the job to a household peer, and
    translations already made in the household are reused from the shared translation memory.

    Examples:
      hearth translate --from en --to pt "The dishwasher finished at 14:32."
      echo "Desligue as luzes da cozinha." | hearth translate -f pt -t en -
      hearth translate --file notes.txt --output notes.pt.txt
    """
    lines = _read_inputs(texts, file)
    ctx = load_context(config, profile)
    beam_size = beam or ctx.config.translate.beam_size
    setup_logging("warning")
    from edge_agent.mesh.state import HouseholdState

    use_mesh = ctx.config.mesh.enabled and not local and HouseholdState.exists(mesh_state_dir(ctx.config))
    indices = [i for i, t in enumerate(lines) if t.strip()]
    results: list[str] = list(lines)  # blank lines pass through
    served: set[str] = set()
    totals = {"sentences": 0, "source_tokens": 0, "target_tokens": 0, "total_ms": 0.0, "cached": 0}

    def absorb(chunk: list[int], result: TranslateResult, by: str) -> None:
        served.add(by)
        for i, text in zip(chunk, result.translations, strict=True):
            results[i] = text
        for k in totals:
            totals[k] += getattr(result.stats, k)

    async def go() -> None:
        batches = [indices[i : i + BATCH] for i in range(0, len(indices), BATCH)]
        make = [
            TranslateRequest(texts=[lines[i] for i in b], source=source, target=target, beam_size=beam_size)
            for b in batches
        ]
        async with open_hearth(ctx, use_mesh=use_mesh) as hearth:
            if use_mesh:
                local_ok = ctx.plan.for_task("translate", f"{source}-{target}").mode == "local"
                await hearth.wait_for_peers("translate", timeout=0.5 if local_ok else 3.0)
            for b, req in zip(batches, make, strict=True):
                result, by = await hearth.translate(req)
                absorb(b, result, by)

    if not indices:
        raise ConfigError("nothing to translate: the input is empty")
    aio.run(go())
    text = "\n".join(results)
    if as_json:
        print(json.dumps({"translations": [results[i] for i in indices], "pair": f"{source}-{target}",
                          "served_by": sorted(served), "stats": totals}, ensure_ascii=False))  # fmt: skip
    elif output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if not as_json:
        console_err.print(
            f"[dim]{totals['sentences']} sentences · {totals['total_ms']:.0f} ms · served by "
            f"{', '.join(sorted(served))}"
            + (f" · {totals['cached']} from translation memory" if totals["cached"] else "")
            + "[/]"
        )
