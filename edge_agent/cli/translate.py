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
from edge_agent.client.schemas import TranslateRequest, TranslateResult
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
    correct: Annotated[
        str | None,
        typer.Option(
            "--correct",
            help="The right translation of the (one-sentence) text: shared with the "
            "household, it then beats every model and cache for that sentence on every device.",
        ),
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
      hearth translate "Turn on the oven." --correct "Liga o forno."   (fix it for the household)

    Corrections are listed and withdrawn with `hearth corrections`.
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
    totals = {"sentences": 0, "source_tokens": 0, "target_tokens": 0, "total_ms": 0.0, "cached": 0,
              "corrected": 0}  # fmt: skip
    if correct is not None:
        from edge_agent.engines.sentences import split_sentences

        if len(indices) != 1 or len(split_sentences(lines[indices[0]]).sentences) != 1 or file is not None:
            raise ConfigError("--correct fixes one sentence: give exactly one sentence to translate")
        if not use_mesh:
            raise ConfigError("corrections are shared by the household: this device is not on one "
                              "(pair it first: hearth pair), or --local was given")  # fmt: skip
        if not correct.strip():
            raise ConfigError("--correct needs the right translation (it is empty)")
    recorded: list[str] = []

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
            if correct is not None:
                before = results[indices[0]]
                record = await hearth.correct(f"{source}-{target}", lines[indices[0]], correct, result.model)
                recorded.extend([record.id, before])
                results[indices[0]] = record.target

    if not indices:
        raise ConfigError("nothing to translate: the input is empty")
    aio.run(go())
    text = "\n".join(results)
    if as_json:
        extra = {"correction": {"id": recorded[0], "was": recorded[1]}} if recorded else {}
        summary = {"translations": [results[i] for i in indices], "pair": f"{source}-{target}",
                   "served_by": sorted(served), "stats": totals, **extra}  # fmt: skip
        print(json.dumps(summary, ensure_ascii=False))
    elif output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if not as_json:
        console_err.print(
            f"[dim]{totals['sentences']} sentences · {totals['total_ms']:.0f} ms · served by "
            f"{', '.join(sorted(served))}"
            + (f" · {totals['cached']} from translation memory" if totals["cached"] else "")
            + (f" · {totals['corrected']} by a household correction" if totals["corrected"] else "")
            + "[/]"
        )
        if recorded:
            console_err.print(f"corrected (was: {recorded[1]!r}); shared with the household as {recorded[0]} "
                              "(withdraw: hearth corrections withdraw ID)", markup=False)  # fmt: skip
