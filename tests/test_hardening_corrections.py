"""Hardening 2, shared corrections, the translation memory and pairing (N2, N3, N11, N12): what a member
may make every device say, what arrival order may decide, what a query may learn across device classes,
and what anyone on the network may do to an invitation.

Each attack asserts the exact refusal, that trusted state (the corrections held and in force, the memory,
the invitation's attempts, the certificates) is unchanged, and that the device keeps serving: a request
through it still gets its answer and none of its loops restarted.
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

from edge_agent.client.schemas import TranslateRequest, TranslateResult, TranslateStats
from edge_agent.config import AgentConfig
from edge_agent.errors import NotAMemberError
from edge_agent.mesh.corrections import Correction, CorrectionError, Corrections, make_correction
from edge_agent.mesh.features.corrections import PUSH_RECORDS, PUSHED_RECORDS, CorrectionSync
from edge_agent.mesh.features.translation_memory import MemoryExchange
from edge_agent.mesh.household import HouseholdRoot, Membership, canonical
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.memory import TranslationMemory, make_entry
from edge_agent.mesh.pairing import (
    MAX_ATTEMPTS,
    TRY_BURST,
    TRY_EVERY,
    DevicePairing,
    Invitation,
    PairingError,
    new_session,
)
from edge_agent.mesh.protocol import CorrectionsData
from edge_agent.service import MeshService, text_audience
from edge_agent.tasks import TASKS
from tests.support.meshsim import Device, SimHousehold, household, until

PAIR = "en-pt"
OVEN, FIXED, EVIL = "Turn off the oven.", "Desliga o forno.", "turn the oven to max"
NOT_APPROVED = (
    "{name} may not correct translations (the hub approves that: `hearth household invite --may-correct`)"
)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


async def _still_serving(requester: Device, server: Device) -> None:
    """A full request/answer between the two, and no loop of either restarted."""
    peer = requester.endpoint.peers.get(server.id)
    assert peer is not None
    chunks = [
        c
        async for c in requester.endpoint.stream(
            peer, "generate", {"words": ["still", "here"]}, deadline_s=5, stall_s=2
        )
    ]
    assert [c.text for c in chunks] == ["still", "here", ""]
    for dev in (requester, server):
        assert dev.endpoint.supervisor.report().restarts == 0


def _sync(dev: Device, tmp: Path) -> CorrectionSync:
    sync = CorrectionSync(dev.endpoint, Corrections(dev.node.membership.member, tmp / dev.name / "c.json"))
    dev.corrections = None
    return sync


def _held(sync: CorrectionSync) -> tuple[dict[str, Correction], str, dict[tuple[str, str], Correction]]:
    """Trusted state of one device's corrections: the records, their digest, what is in force."""
    store = sync.corrections
    return dict(store.records), store.digest, store.active()


async def _push(sender: Device, to: Device, records: list[Correction]) -> None:
    peer = sender.endpoint.peers.get(to.id)
    assert peer is not None
    await sender.endpoint.send(to.id, Channel.REQUESTS, CorrectionsData(nonce=0, records=records),
                               session=peer.session)  # fmt: skip


async def _spread(home: SimHousehold, tmp: Path) -> tuple[Device, Device, Device, dict[str, CorrectionSync]]:
    """A hub (admin, serves), a fridge the hub approved to correct, and a plug paired as most devices
    are: it may request every task, but not correct. The fridge's correction of OVEN is everywhere."""
    hub = home.device("hub", serves=["generate"], device_class="hub", admin=True)
    fridge = home.device("fridge", may_correct=True)
    plug = home.device("plug")
    await home.start(hub, fridge, plug)
    syncs = {d.name: _sync(d, tmp) for d in (hub, fridge, plug)}
    record = await syncs["fridge"].correct(PAIR, OVEN, FIXED)
    assert await until(lambda: all(record.id in s.corrections.records for s in syncs.values()))
    for dev in (hub, fridge, plug):
        dev.corrections = syncs[dev.name].corrections.digest
    return hub, fridge, plug, syncs


# -- N2: only a device the operator approved may make every device say something else ---------------------


async def test_n2_a_member_the_hub_did_not_approve_cannot_rewrite_a_sentence_anywhere(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge, plug, syncs = await _spread(home, tmp_path)
        before = {name: _held(s) for name, s in syncs.items() if name != "plug"}
        # 1. Through its own agent: refused before anything is stored or sent.
        with pytest.raises(CorrectionError) as refused:
            await syncs["plug"].correct(PAIR, OVEN, EVIL)
        assert re.fullmatch(r"correction [0-9a-f]{8}: " + re.escape(NOT_APPROVED.format(name="plug")),
                            str(refused.value))  # fmt: skip
        # 2. Pushed by hand, signed with its own key: dropped whole, unverified, by every peer.
        evil = make_correction(plug.identity.signing_key, plug.id, PAIR, OVEN, EVIL)
        for target in (hub, fridge):
            await _push(plug, target, [evil])
        assert await until(
            lambda: all(d.endpoint.dropped["CorrectionsPushForbidden"] == 1 for d in (hub, fridge))
        )
        # 3. Slipped into a catch-up answer (its digest differs, so the hub asks it): refused per record.
        syncs["plug"].corrections.add(evil)  # unchecked: a compromised plug holds whatever it likes
        plug.corrections = syncs["plug"].corrections.digest
        assert await until(lambda: hub.endpoint.dropped["CorrectionRefused"] >= 1)
        assert {name: _held(syncs[name]) for name in before} == before
        assert syncs["hub"].corrections.lookup(PAIR, [OVEN])[OVEN].target == FIXED
        await _still_serving(fridge, hub)
        await _still_serving(plug, hub)


async def test_n2_a_push_carries_a_few_records_of_its_sender_only_and_a_few_a_minute(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate"], device_class="hub", admin=True)
        car = home.device("car", may_correct=True)
        fridge = home.device("fridge", may_correct=True)
        await home.start(hub, car, fridge)
        hub_sync = _sync(hub, tmp_path)

        def made_by(dev: Device, n: int, tag: str) -> list[Correction]:
            key = dev.identity.signing_key
            return [make_correction(key, dev.id, PAIR, f"{tag} {i}.", f"{tag} pt {i}.") for i in range(n)]

        await _push(car, hub, made_by(car, PUSH_RECORDS + 1, "Too many"))  # one push, too many records
        await _push(car, hub, made_by(fridge, 1, "Relayed"))  # another device's record, pushed by the car
        assert await until(lambda: hub.endpoint.dropped["CorrectionsPushMalformed"] == 2)
        assert hub_sync.corrections.records == {}
        # The window counts records, not messages: 7 pushes of 4 fit in 30, an eighth of 4 does not.
        for i in range(PUSHED_RECORDS // PUSH_RECORDS):
            await _push(car, hub, made_by(car, PUSH_RECORDS, f"Batch {i}"))
        await _push(car, hub, made_by(car, PUSH_RECORDS, "Over"))
        assert await until(lambda: hub.endpoint.dropped["CorrectionsPushFlood"] == 1)
        held = PUSHED_RECORDS // PUSH_RECORDS * PUSH_RECORDS
        assert len(hub_sync.corrections.records) == held
        await _push(car, hub, made_by(car, PUSHED_RECORDS - held, "Last"))  # what is left of the window
        assert await until(lambda: len(hub_sync.corrections.records) == PUSHED_RECORDS)
        assert hub.endpoint.dropped["CorrectionsPushFlood"] == 1
        await _still_serving(car, hub)


async def test_n2_any_member_declines_a_correction_for_its_own_sentences_only(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, _, plug, syncs = await _spread(home, tmp_path)
        [record] = syncs["plug"].corrections.records.values()
        before = {name: _held(s) for name, s in syncs.items()}
        # Withdrawing it for the household is for devices the hub approved to correct.
        with pytest.raises(CorrectionError, match=exactly(
            "plug may not withdraw corrections for the household (only a device the hub approved to "
            "correct, or an admin); `hearth corrections withdraw ID --here` declines it for this device's "
            "own translations"
        )):  # fmt: skip
            await syncs["plug"].withdraw(record.id)
        assert {name: _held(s) for name, s in syncs.items()} == before
        # Declining it for its own translations needs no approval and changes nothing elsewhere.
        assert syncs["plug"].decline(record.id) == record
        assert syncs["plug"].corrections.lookup(PAIR, [OVEN]) == {}
        assert syncs["plug"].corrections.lookup(PAIR, [OVEN], here=False)[OVEN] == record  # when serving
        assert {name: _held(syncs[name]) for name in ("hub", "fridge")} == {
            name: before[name] for name in ("hub", "fridge")
        }
        assert syncs["plug"].corrections.records == before["plug"][0]  # declining adds no record
        again = Corrections(plug.node.membership.member, tmp_path / "plug" / "c.json")
        assert list(again.declined) == [record.id]  # kept across a restart
        unknown = f"no correction {'0' * 32} here (`hearth corrections list` shows them)"
        with pytest.raises(CorrectionError, match=exactly(unknown)):
            syncs["plug"].decline("0" * 32)
        await _still_serving(plug, hub)


def _fake_service(tmp: Path, routing: dict[str, object], corrections: Corrections) -> Any:
    """What MeshService.translate_with_memory reads, without engines or a mesh."""
    ident = DeviceIdentity.generate()
    return SimpleNamespace(
        config=AgentConfig.model_validate({"routing": routing, "translate": {"memory_lookup_ms": 0}}),
        corrections=corrections,
        memory=TranslationMemory(),
        exchange=None,
        state=SimpleNamespace(identity=ident),
        certificate=SimpleNamespace(device_id=ident.device_id),
    )


class _Server:
    """The compute step: records the request it got and answers like a model."""

    def __init__(self) -> None:
        self.got: list[TranslateRequest] = []

    async def __call__(self, request: TranslateRequest) -> tuple[TranslateResult, str]:
        self.got.append(request)
        stats = TranslateStats(sentences=len(request.texts), source_tokens=1, target_tokens=1, total_ms=1.0)
        result = TranslateResult(translations=[f"model: {t}" for t in request.texts], pair=PAIR, model="m",
                                 stats=stats)  # fmt: skip
        return result, "hub"


def _corrections_with_oven() -> tuple[Corrections, Correction]:
    root = HouseholdRoot(SigningKey.generate())
    membership = Membership(root.key.verify_key)
    ident = DeviceIdentity.generate()
    cert = root.issue(ident, name="fridge", profile="hub", requests=list(TASKS), serves=[], may_correct=True)
    membership.add_certificate(cert)
    store = Corrections(membership.member)
    record = make_correction(ident.signing_key, ident.device_id, PAIR, OVEN, FIXED)
    assert store.merge([record]) == (1, [])
    return store, record


async def test_n2_a_decline_holds_for_the_devices_own_requests_wherever_they_run(tmp_path: Path) -> None:
    store, record = _corrections_with_oven()
    service = _fake_service(tmp_path, {}, store)
    ask = TranslateRequest(texts=[f"{OVEN} Good night."], source="en", target="pt")
    server = _Server()
    result, _ = await MeshService.translate_with_memory(service, ask, server, own=True)
    assert result.translations == [f"{FIXED} model: Good night."]
    assert server.got[-1].texts == ["Good night."] and not server.got[-1].apply_corrections
    store.decline(record.id)
    result, _ = await MeshService.translate_with_memory(service, ask, server, own=True)
    assert result.translations == [f"model: {OVEN} model: Good night."]
    assert server.got[-1].texts == [OVEN] and not server.got[-1].apply_corrections  # "Good night." was kept
    # Serving a peer, this device answers with the household's corrections (its own declines are its
    # own), unless the peer applied them itself.
    result, _ = await MeshService.translate_with_memory(service, ask, _Server(), own=False)
    assert result.translations == [f"{FIXED} model: Good night."]
    applied = ask.model_copy(update={"apply_corrections": False})
    result, _ = await MeshService.translate_with_memory(service, applied, _Server(), own=False)
    assert result.translations == [f"model: {OVEN} model: Good night."]


def test_n2_certificates_issued_before_the_capability_existed_still_verify_and_may_not_correct() -> None:
    root = HouseholdRoot(SigningKey.generate())
    cert = root.issue(DeviceIdentity.generate(), name="plug", profile="hub", requests=list(TASKS), serves=[])
    assert b"may_correct" not in canonical(cert)  # the bytes an older hub signed
    cert.verify(root.key.verify_key)
    assert not cert.corrects
    raised = cert.model_copy(update={"may_correct": True})  # a device granting itself the capability
    with pytest.raises(NotAMemberError, match=exactly(
        "DeviceCertificate signature does not verify against the household root"
    )):  # fmt: skip
        raised.verify(root.key.verify_key)
    admin = root.issue(
        DeviceIdentity.generate(), name="hub", profile="hub", requests=[], serves=[], admin=True
    )
    assert admin.corrects and not admin.may_correct


def test_n2_pairing_asks_the_operator_what_a_device_may_request_and_whether_it_may_correct() -> None:
    from edge_agent.cli import app

    shown = " ".join(
        CliRunner().invoke(app, ["household", "invite", "--help"], env={"COLUMNS": "300"}).output.split()
    )
    defaults = ("appliance: translate", "vehicle: generate, translate, transcribe, vad",
                "hub: generate, embed, translate, transcribe, vad")  # fmt: skip
    for expected in ("--requests", *defaults, "--may-correct", "default no"):
        assert expected in shown, expected
    root = HouseholdRoot(SigningKey.generate())
    for approved, may_correct, expected in [(None, False, ["translate"]), (["generate", "vad"], True,
                                                                          ["generate", "vad"])]:  # fmt: skip
        inv = Invitation(root, group_key=bytes(32), requests=approved, may_correct=may_correct)
        device = DevicePairing(DeviceIdentity.generate(), inv.code, inv.invitation_id, session=new_session(),
                               name="plug", profile="hub", requests=list(TASKS), serves=[])  # fmt: skip
        challenge, attempt = inv.challenge(device.hello)
        _, cert = attempt.welcome(device.prove(challenge))
        assert (cert.requests, cert.may_correct) == (expected, may_correct)


# -- N3: the order records arrive in decides nothing --------------------------------------------------------


class _Home:
    def __init__(self) -> None:
        self.root = HouseholdRoot(SigningKey.generate())
        self.membership = Membership(self.root.key.verify_key)
        self.ids: dict[str, DeviceIdentity] = {}
        roles = [("fridge", True, False), ("car", True, False), ("plug", False, False), ("hub", False, True)]
        for name, may_correct, admin in roles:
            ident = self.ids[name] = DeviceIdentity.generate()
            self.membership.add_certificate(self.root.issue(
                ident, name=name, profile="hub", requests=list(TASKS), serves=[], admin=admin,
                may_correct=may_correct))  # fmt: skip

    def record(self, who: str, source: str, target: str = "", *, withdraws: str | None = None,
               ago: float = 0.0) -> Correction:  # fmt: skip
        ident = self.ids[who]
        return make_correction(ident.signing_key, ident.device_id, PAIR, source, target, withdraws=withdraws,
                               now=time.time() - ago)  # fmt: skip

    def store(self, **bounds: int) -> Corrections:
        return Corrections(self.membership.member, **bounds)


def test_n3_a_withdrawal_seen_before_its_correction_counts_only_if_its_author_may_correct() -> None:
    home = _Home()
    good = home.record("fridge", OVEN, FIXED, ago=10)
    # The plug saw the correction on one device and races a withdrawal of it to another.
    early = home.record("plug", OVEN, withdraws=good.id)
    store = home.store()
    added, refused = store.merge([early])
    assert (added, refused) == (0, [f"withdrawal {early.id[:8]}: " + NOT_APPROVED.format(name="plug")])
    assert store.records == {}  # not kept to wait for the correction
    assert store.merge([good]) == (1, [])
    assert store.lookup(PAIR, [OVEN])[OVEN] == good  # the correction is in force when it arrives
    # Every order of the same records gives the same set and the same answer: a corrector's early
    # withdrawal counts as a later one would; one naming another sentence than it withdraws never does.
    newer = home.record("car", OVEN, "Apaga o forno.", ago=5)
    back = home.record("car", OVEN, withdraws=newer.id)
    mismatched = home.record("hub", "Another sentence.", withdraws=good.id)
    outcomes = set()
    for order in itertools.permutations([good, newer, back, mismatched, early]):
        store = home.store()
        for record in order:
            store.merge([record])
        outcomes.add((store.digest, tuple(sorted((k, v.id) for k, v in store.active().items()))))
    assert len(outcomes) == 1 and store.lookup(PAIR, [OVEN])[OVEN] == good


def test_n3_a_flood_of_withdrawals_of_made_up_ids_displaces_only_the_flooders_records() -> None:
    home = _Home()
    store = home.store(max_records=8, max_per_author=6)
    kept = [home.record("fridge", f"Sentence {i}.", f"Frase {i}.", ago=100 - i) for i in range(3)]
    taken_back = home.record("hub", kept[0].source, withdraws=kept[0].id, ago=50)
    assert store.merge([*kept, taken_back]) == (4, [])
    before = (dict(store.records), store.active())
    flood = [home.record("car", OVEN, withdraws=f"{i:032x}", ago=i) for i in range(50)]
    store.merge(flood)
    # The car's own cap (6) bounds it, and past the total (8) the largest holder (the car) gives way.
    assert (
        len(store.records) == 8
        and sum(r.author == home.ids["car"].device_id for r in store.records.values()) == 4
    )
    assert {i: r for i, r in store.records.items() if r.author != home.ids["car"].device_id} == before[0]
    assert store.active() == before[1] and kept[0].id not in {r.id for r in store.active().values()}


# -- N11: a sentence policy keeps from a class is never answered to it --------------------------------------


async def test_n11_a_sentence_policy_keeps_from_a_class_is_not_answered_to_that_class(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", serves=["generate", "translate"], device_class="hub")
        fridge = home.device("fridge", serves=["translate"])  # its policy: peer_classes = ["hub"]
        plug = home.device("plug")
        for dev in (hub, fridge, plug):
            dev.memory = True
        exchanges = {d.name: MemoryExchange(d.endpoint, TranslationMemory()) for d in (hub, fridge, plug)}
        await home.start(hub, fridge, plug)
        memory = exchanges["fridge"].memory
        mine = make_entry(fridge.identity.signing_key, fridge.id, PAIR, OVEN, FIXED, "m")
        memory.put(mine, frozenset({"hub"}))
        before = (len(memory), memory.audience(PAIR, OVEN))
        for name in ("plug", "hub"):
            ask = exchanges[name]
            found = await ask.ask(PAIR, {ask.memory.key(PAIR, OVEN): OVEN}, 2.0,
                                  allowed=lambda p: p.device_id == fridge.id)  # fmt: skip
            assert [e.source for e in found.values()] == ([] if name == "plug" else [OVEN]), name
        assert (len(memory), memory.audience(PAIR, OVEN)) == before
        # A later put of the same sentence, for anyone (a peer's request served here), never widens it.
        memory.put(make_entry(fridge.identity.signing_key, fridge.id, PAIR, OVEN, FIXED, "m"))
        assert memory.audience(PAIR, OVEN) == frozenset({"hub"})
        assert memory.lookup([memory.key(PAIR, OVEN)], "appliance") == []
        await _still_serving(plug, hub)


@pytest.mark.parametrize(
    ("routing", "audience"),
    [
        ({}, None),
        ({"peer_classes": ["hub", "laptop"]}, frozenset({"hub", "laptop"})),
        ({"never_offload": ["translate"]}, frozenset()),
        ({"mode": "local-only"}, frozenset()),
    ],
)
async def test_n11_text_policy_keeps_from_a_class_stays_out_of_servers_memories_and_answers(
    tmp_path: Path, routing: dict[str, object], audience: frozenset[str] | None
) -> None:
    assert text_audience(AgentConfig.model_validate({"routing": routing}).routing) == audience
    service = _fake_service(
        tmp_path, routing, Corrections(Membership(SigningKey.generate().verify_key).member)
    )
    server = _Server()
    await MeshService.translate_with_memory(
        service, TranslateRequest(texts=[OVEN], source="en", target="pt"), server, own=True
    )
    # The server is asked to keep it only when any member may see it; here it is kept for those who may.
    assert server.got[-1].remember == (audience is None)
    assert service.memory.get(PAIR, OVEN) is not None and service.memory.audience(PAIR, OVEN) == audience
    key = service.memory.key(PAIR, OVEN)
    assert bool(service.memory.lookup([key], "appliance")) == (audience is None)
    assert bool(service.memory.lookup([key], "hub")) == (audience is None or "hub" in audience)


# -- N12: anyone may try codes, but not spend an invitation in one burst ------------------------------------


def _hello(inv: Invitation, code: str | None = None) -> DevicePairing:
    wrong = "4827-1930" if inv.code != "4827-1930" else "5827-1930"
    return DevicePairing(DeviceIdentity.generate(), code or wrong, inv.invitation_id, session=new_session(),
                         name="fridge", profile="hub", requests=["translate"], serves=[])  # fmt: skip


def test_n12_a_burst_of_hellos_spends_three_tries_and_the_rest_are_turned_away_uncounted() -> None:
    inv = Invitation(HouseholdRoot(SigningKey.generate()), group_key=bytes(32))
    t0 = inv.created
    for _ in range(TRY_BURST):
        inv.challenge(_hello(inv).hello, t0)
    serial = inv.root._serial
    paused = (
        "too many setup-code tries on this invitation just now (someone may be guessing); try again in 40 s"
    )
    for _ in range(MAX_ATTEMPTS):
        with pytest.raises(PairingError, match=exactly(paused)):
            inv.challenge(_hello(inv).hello, t0 + timedelta(seconds=0.2))
    assert (inv.attempts_left, inv.paused, inv.used, inv.root._serial) == (
        MAX_ATTEMPTS - TRY_BURST, MAX_ATTEMPTS, False, serial
    )  # fmt: skip
    # The one who knows the code pairs once the pause is over.
    device = _hello(inv, inv.code)
    challenge, attempt = inv.challenge(device.hello, t0 + TRY_EVERY)
    welcome, cert = attempt.welcome(device.prove(challenge), t0 + TRY_EVERY)
    assert device.finish(welcome).certificate == cert


def test_n12_spending_every_try_outlasts_a_default_invitation_and_the_hub_says_so_honestly() -> None:
    from edge_agent.cli.household import _closed

    root = HouseholdRoot(SigningKey.generate())
    default = Invitation(root, group_key=bytes(32), lifetime=timedelta(minutes=10))  # `invite`'s default
    now, tried = default.created, 0
    while now < default.expires:  # an attacker trying as fast as the invitation lets anyone
        try:
            default.challenge(_hello(default).hello, now)
            tried += 1
        except PairingError:
            pass
        now += timedelta(seconds=1)
    assert tried == TRY_BURST + 14 and default.attempts_left == 3  # still open when it expired
    longest = Invitation(root, group_key=bytes(32))  # 15 minutes
    now = longest.created
    for _ in range(MAX_ATTEMPTS):
        longest.challenge(_hello(longest).hello, now)
        now += TRY_EVERY
    message = (
        "this invitation is closed: all 20 setup-code tries were used (anyone who can reach the pairing "
        "listener can try a code, so perhaps not you); make a new one with `hearth household invite`"
    )
    with pytest.raises(PairingError, match=exactly(message)):
        longest.challenge(_hello(longest, longest.code).hello, now)
    assert now - longest.created < timedelta(minutes=15)
    longest.paused = 3
    closed = _closed(longest, PairingError("the invitation is closed after too many wrong codes"))
    assert closed == message + (
        " (3 setup-code tries were turned away for coming too fast: someone may be guessing; look for an "
        "unknown device on your network)"
    )
