"""hassfest-style checks of the component, runnable anywhere (hassfest itself lives in Home Assistant's
source tree, not in its wheel): the manifest, translations against the code that uses them, services,
icons, the quality-scale declaration, brand images and hacs.json."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from awesomeversion import AwesomeVersion
from homeassistant.const import __version__ as HA_VERSION

COMPONENT = Path(__file__).resolve().parents[1] / "custom_components" / "hearth"
REPO = COMPONENT.parents[2]

# hassfest's quality_scale.py, bronze to gold (platinum is not claimed).
RULES = {
    "bronze": "action-setup appropriate-polling brands common-modules config-flow config-flow-test-coverage "
    "dependency-transparency docs-actions docs-high-level-description docs-installation-instructions "
    "docs-removal-instructions entity-event-setup entity-unique-id has-entity-name runtime-data "
    "test-before-configure test-before-setup unique-config-entry",
    "silver": "action-exceptions config-entry-unloading docs-configuration-parameters "
    "docs-installation-parameters entity-unavailable integration-owner log-when-unavailable "
    "parallel-updates reauthentication-flow test-coverage",
    "gold": "devices diagnostics discovery discovery-update-info docs-data-update docs-examples "
    "docs-known-limitations docs-supported-devices docs-supported-functions docs-troubleshooting "
    "docs-use-cases dynamic-devices entity-category entity-device-class entity-disabled-by-default "
    "entity-translations exception-translations icon-translations reconfiguration-flow repair-issues "
    "stale-devices",
}
IOT_CLASSES = {"assumed_state", "cloud_polling", "cloud_push", "local_polling", "local_push", "calculated"}
INTEGRATION_TYPES = {"device", "entity", "hardware", "helper", "hub", "service", "system", "virtual"}


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _sources() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(COMPONENT.glob("*.py"))}


def _keyword_literals(tree: ast.AST, keyword: str) -> set[str]:
    return {
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == keyword and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)
    }


def _assigned_literals(tree: ast.AST, name: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        if any(getattr(t, "id", getattr(t, "attr", "")) == name for t in node.targets):
            found.add(str(node.value.value))
    return found


def test_manifest_has_what_hassfest_and_hacs_require() -> None:
    manifest = _json(COMPONENT / "manifest.json")
    keys = list(manifest)
    assert keys[:2] == ["domain", "name"] and keys[2:] == sorted(keys[2:]), "hassfest's key order"
    assert manifest["domain"] == COMPONENT.name
    for key in ("codeowners", "documentation", "issue_tracker", "version", "config_flow", "iot_class"):
        assert key in manifest, key
    assert AwesomeVersion(manifest["version"]).valid
    assert manifest["iot_class"] in IOT_CLASSES and manifest["integration_type"] in INTEGRATION_TYPES
    assert manifest["config_flow"] is True and (COMPONENT / "config_flow.py").is_file()
    assert all(re.fullmatch(r"@[\w-]+", owner) for owner in manifest["codeowners"])
    assert manifest["documentation"].startswith("https://") and manifest["issue_tracker"].startswith(
        "https://"
    )
    for requirement in manifest["requirements"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", requirement), f"unpinned: {requirement}"
    for dependency in manifest.get("dependencies", []) + manifest.get("after_dependencies", []):
        assert importlib.util.find_spec(f"homeassistant.components.{dependency}"), dependency
    for service in manifest.get("zeroconf", []):
        name = service if isinstance(service, str) else service["type"]
        assert re.fullmatch(r"_[a-z0-9-]+\._(tcp|udp)\.local\.", name), name
    for topic in manifest.get("mqtt", []):
        assert "#" not in topic[:-1] and topic.count("+") <= 2, topic


def test_translations_are_strings_json_and_cover_what_the_code_uses() -> None:
    strings = _json(COMPONENT / "strings.json")
    assert _json(COMPONENT / "translations" / "en.json") == strings, "translations/en.json is strings.json"
    sources = _sources()
    every = ast.Module(body=[s for tree in sources.values() for s in tree.body], type_ignores=[])
    keys = _keyword_literals(every, "translation_key")
    known = set(strings["exceptions"]) | set(strings["issues"])
    known |= {k for platform in strings["entity"].values() for k in platform}
    assert keys <= known, f"translation keys missing from strings.json: {keys - known}"
    used_exceptions = {k for k in keys if k not in strings["issues"]} - {
        k for platform in strings["entity"].values() for k in platform
    }
    assert set(strings["exceptions"]) <= used_exceptions | keys, "unused exception strings"
    # Entities: each platform's translation keys.
    entity_keys = {
        "sensor": _keyword_literals(sources["sensor.py"], "key"),
        "binary_sensor": {"connectivity"},
        "conversation": _assigned_literals(sources["conversation.py"], "_attr_translation_key"),
        "ai_task": _assigned_literals(sources["ai_task.py"], "_attr_translation_key"),
        "update": {"model_update"},
    }
    for platform, keys_used in entity_keys.items():
        assert keys_used == set(strings["entity"][platform]), platform
    # The config flow's steps, errors and aborts.
    flow = sources["config_flow.py"]
    steps = _keyword_literals(flow, "step_id") | {"user"}
    assert steps <= set(strings["config"]["step"]), steps - set(strings["config"]["step"])
    errors = {
        node.value.value
        for node in ast.walk(flow)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }  # fmt: skip
    assert errors <= set(strings["config"]["error"]), errors - set(strings["config"]["error"])
    aborts = _keyword_literals(flow, "reason") | {"reauth_successful", "reconfigure_successful"}
    assert aborts <= set(strings["config"]["abort"]), aborts - set(strings["config"]["abort"])
    for step in strings["config"]["step"].values():  # every field a form shows is named and described
        assert set(step.get("data", {})) == set(step.get("data_description", step.get("data", {})))


def test_services_and_icons_match() -> None:
    services = yaml.safe_load((COMPONENT / "services.yaml").read_text())
    strings = _json(COMPONENT / "strings.json")
    icons = _json(COMPONENT / "icons.json")
    assert set(services) == set(strings["services"]) == set(icons["services"])
    for name, service in services.items():
        assert set(service["fields"]) == set(strings["services"][name]["fields"]), name
    for platform, keys in strings["entity"].items():
        assert set(keys) == set(icons["entity"][platform]), platform
    for rel in ("brand/icon.png", "brand/icon@2x.png"):
        assert (COMPONENT / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel


def test_quality_scale_declares_every_bronze_silver_and_gold_rule() -> None:
    declared = yaml.safe_load((COMPONENT / "quality_scale.yaml").read_text())["rules"]
    for tier, names in RULES.items():
        for rule in names.split():
            assert rule in declared, f"{tier} rule {rule} not declared"
            entry = declared[rule]
            status = entry if isinstance(entry, str) else entry["status"]
            assert status in ("done", "exempt"), f"{tier} rule {rule} is {status}"
            if status == "exempt":
                assert isinstance(entry, dict) and entry.get("comment"), f"exempt {rule} needs a reason"


@pytest.mark.parametrize("key", ["name", "homeassistant", "zip_release", "filename"])
def test_hacs_json_names_the_release_zip_and_the_oldest_home_assistant(key: str) -> None:
    hacs = _json(REPO / "hacs.json")
    assert key in hacs
    allowed = {"name", "content_in_root", "zip_release", "filename", "homeassistant", "render_readme",
               "hide_default_branch", "country", "hacs", "persistent_directory"}  # fmt: skip
    assert set(hacs) <= allowed
    assert AwesomeVersion(hacs["homeassistant"]) <= AwesomeVersion(HA_VERSION)
    assert hacs["filename"].endswith(".zip")
