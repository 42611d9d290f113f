"""The browser's sealing code (appliance/web/chat/*.js) in real Chromium: the RFCs' own examples, byte for byte.

Vectors, shared with the SDK's tests: tests/sluice_sdk/vectors/rfc9458_appendix_a.json
(RFC 9458 Appendix A), chunked_ohttp_appendix_a.json (draft-ietf-ohai-chunked-ohttp
Appendix A) and rfc9292_examples.json (RFC 9292 Section 5).  The deterministic
seam is the ephemeral private key; everything else is the code the page runs.
The browser is a client: it seals requests and opens responses (the gate's
halves, opening requests and sealing responses, are the SDK's and tested there).
Plus the pieces the SDK pins against (fingerprints, key configuration lists),
the not-secure-context refusal, and rejections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from sluice_sdk.keyconfig import KeyConfig, SymmetricAlgorithm, encode_key_configs
from tests.sluice_sdk.conftest import load_vector

from .seal_browser import chromium, run, seal_page

pytestmark = pytest.mark.integration

RFC9458 = load_vector("rfc9458_appendix_a.json")
CHUNKED = load_vector("chunked_ohttp_appendix_a.json")
BHTTP = load_vector("rfc9292_examples.json")
VECTORS = pytest.mark.parametrize("vector", [RFC9458, CHUNKED], ids=["rfc9458", "chunked"])
# A loopback origin is a secure context; nothing listens there: page.route() serves it all.
LOOPBACK = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    with seal_page(browser, LOOPBACK) as opened:
        yield opened


# --- RFC 9458 Appendix A and the chunked draft's example ---------------------------------------


@VECTORS
def test_key_schedule_intermediates(page: Page, vector: dict[str, Any]) -> None:
    label = "message/bhttp chunked response" if vector is CHUNKED else "message/bhttp response"
    got = run(
        page,
        """
        const config = ohttp.decodeKeyConfig(unhex(arg.v.key_config));
        const ctx = await hpke.setupSender(config.publicKey, unhex(arg.v.info), unhex(arg.v.ephemeral_private_key));
        const secret = await ctx.export(new TextEncoder().encode(arg.label), 16);
        const salt = octets.concat(ctx.enc, unhex(arg.v.response_nonce));
        const {key, nonce} = await hpke.responseKeyAndNonce(secret, salt);
        return {enc: hex(ctx.enc), secret: hex(secret), salt: hex(salt), prk: hex(await hpke.extract(salt, secret)),
                key: hex(key), nonce: hex(nonce), usable: ohttp.usable(config), key_id: config.keyId};
    """,
        {"v": vector, "label": label},
    )
    assert got == {
        "enc": vector["ephemeral_public_key"],
        "secret": vector["exported_secret"],
        "salt": vector["salt"],
        "prk": vector["prk"],
        "key": vector["aead_key"],
        "nonce": vector["aead_nonce"],
        "usable": True,
        "key_id": 1,
    }


def test_rfc9458_request_sealed_and_response_opened(page: Page) -> None:
    got = run(
        page,
        """
        const config = ohttp.decodeKeyConfig(unhex(arg.key_config));
        const {body, opener} = await ohttp.encapsulateRequest(config, unhex(arg.request), unhex(arg.ephemeral_private_key));
        const response = await opener.open(unhex(arg.encapsulated_response));
        return {body: hex(body), response: hex(response), status: bhttp.decodeResponse(response).status};
    """,
        RFC9458,
    )
    assert got == {"body": RFC9458["encapsulated_request"], "response": RFC9458["response"], "status": 200}


def test_chunked_request_sealed_in_chunks(page: Page) -> None:
    got = run(
        page,
        """
        const config = ohttp.decodeKeyConfig(unhex(arg.key_config));
        const sealer = await ohttp.ChunkedRequestSealer.create(config, unhex(arg.ephemeral_private_key));
        const request = unhex(arg.request);
        const [first, second] = arg.request_chunks;
        const body = octets.concat(await sealer.write(request.subarray(0, first)),
                                 await sealer.write(request.subarray(first, first + second)), await sealer.close());
        return hex(body);
    """,
        CHUNKED,
    )
    assert got == CHUNKED["encapsulated_request"]


def test_chunked_response_opened_byte_by_byte(page: Page) -> None:
    got = run(
        page,
        """
        const config = ohttp.decodeKeyConfig(unhex(arg.key_config));
        const sealer = await ohttp.ChunkedRequestSealer.create(config, unhex(arg.ephemeral_private_key));
        await sealer.close(unhex(arg.request));
        const opener = sealer.responseOpener();
        const chunks = [];
        for (const byte of unhex(arg.encapsulated_response)) {
            for (const plain of await opener.feed(Uint8Array.of(byte))) chunks.push(hex(plain));
        }
        const last = hex(await opener.finish());
        const nonces = [0, 1, 2].map((i) => hex(hpke.xorCounter(unhex(arg.aead_nonce), i)));
        return {chunks, last, nonces};
    """,
        CHUNKED,
    )
    assert got == {"chunks": ["01", "40c8"], "last": "", "nonces": CHUNKED["chunk_nonces"]}


# --- RFC 9292 examples -------------------------------------------------------------------------


def test_rfc9292_known_length_request_encoded(page: Page) -> None:
    example = BHTTP["known_length_request"]
    got = run(
        page,
        """
        const r = arg.request;
        const request = {method: r.method, scheme: r.scheme, authority: r.authority, path: r.path,
                         headers: r.headers, content: new Uint8Array(0), trailers: r.trailers};
        const minimal = {method: "GET", scheme: "https", authority: "example.com", path: "/"};
        return [hex(bhttp.encodeRequest(request)), hex(bhttp.encodeRequest(request, {truncate: true})),
                hex(bhttp.encodeRequest(minimal, {truncate: true}))];
    """,
        example,
    )
    assert got == [example["hex"], example["hex"][:-4], RFC9458["request"]]


@pytest.mark.parametrize("name", ["indeterminate_length_response", "known_length_response"])
def test_rfc9292_responses_decoded_whole_and_byte_by_byte(page: Page, name: str) -> None:
    example = BHTTP[name]
    got = run(
        page,
        """
        const latin1 = (b) => String.fromCharCode(...b);
        const whole = bhttp.decodeResponse(unhex(arg.hex));
        const decoder = new bhttp.ResponseDecoder();
        const events = [];
        for (const byte of unhex(arg.hex)) events.push(...decoder.feed(Uint8Array.of(byte)));
        events.push(...decoder.finish());
        const streamed = events.filter((e) => e.type === "data").map((e) => latin1(e.data)).join("");
        return {informational: whole.informational, status: whole.status, headers: whole.headers,
                content: latin1(whole.content), trailers: whole.trailers, streamed,
                kinds: [...new Set(events.map((e) => e.type))]};
    """,
        example,
    )
    expected = example["response"]
    assert got == {**expected, "streamed": expected["content"], "kinds": ["head", "data", "end"]}


def test_rfc9292_responses_truncated_where_allowed(page: Page) -> None:
    # RFC 9292 Section 3.8: "0140c8" (RFC 9458's bare 200) ends after its status, the
    # second message after its content, the third has zero padding after its trailers.
    got = run(
        page,
        """
        const cut = bhttp.decodeResponse(unhex("0140c8"));
        const noTrailers = bhttp.decodeResponse(unhex("0140c80003616263"));
        const padded = bhttp.decodeResponse(unhex("0140c800036162630000000000"));
        return [cut.status, cut.headers, noTrailers.trailers, String.fromCharCode(...padded.content)];
    """,
    )
    assert got == [200, [], [], "abc"]


@pytest.mark.parametrize(
    "message",
    [
        "0340c80161",  # indeterminate: ends inside the header section
        "0340c80003616263",  # indeterminate: content without its terminator
        "0140c8000361",  # known length: content cut short
        "0140c80003616263000001",  # non-zero padding
        "0140c8040141014100",  # uppercase field name
        "0140c8040161010a00",  # a control byte in a value
        "01400200",  # final status 2 is not a status
        "00034745540568747470730b6578616d706c652e636f6d012f",  # a request, not a response
    ],
)
def test_reject_malformed_responses(page: Page, message: str) -> None:
    got = run(
        page,
        """
        try { bhttp.decodeResponse(unhex(arg)); return "accepted"; }
        catch (error) { return error.name + (error.message.includes(arg) ? ": echoed" : ""); }
    """,
        message,
    )
    assert got == "BhttpError"


# --- key configurations and fingerprints, as the SDK computes them -----------------------------


def test_key_configs_and_fingerprints_match_the_sdk(page: Page) -> None:
    rfc = KeyConfig.decode(bytes.fromhex(RFC9458["key_config"]))
    unusable = KeyConfig(9, 0x0010, b"\x04" * 65, (SymmetricAlgorithm(1, 1),))
    listing = encode_key_configs([unusable, rfc])
    got = run(
        page,
        """
        const configs = ohttp.decodeKeyConfigs(unhex(arg));
        const picked = configs.find(ohttp.usable);
        return {count: configs.length, usable: configs.map(ohttp.usable), key_id: picked.keyId,
                encoded: hex(picked.encoded), fingerprint: await ohttp.fingerprint(picked)};
    """,
        listing.hex(),
    )
    assert got == {
        "count": 2,
        "usable": [False, True],
        "key_id": 1,
        "encoded": rfc.encode().hex(),
        "fingerprint": rfc.fingerprint(),
    }


@pytest.mark.parametrize(
    "listing",
    [
        "",  # nothing
        "002d",  # a length and no configuration
        "00060100200000",  # truncated public key
        "002d" + RFC9458["key_config"][:-8] + "00010001",  # a suite listed twice
        "000801ffff00000004000100",  # unknown KEM
    ],
)
def test_reject_malformed_key_config_lists(page: Page, listing: str) -> None:
    got = run(
        page,
        """
        try { ohttp.decodeKeyConfigs(unhex(arg)); return "accepted"; } catch (error) { return error.name; }
    """,
        listing,
    )
    assert got == "KeyConfigError"


# --- failing closed ----------------------------------------------------------------------------


def test_reject_altered_or_truncated_responses(page: Page) -> None:
    """Every flipped bit and every truncation of the examples' responses is one message-less SealError."""
    got = run(
        page,
        """
        const results = new Set();
        const note = (error) => results.add(error.name + ":" + error.message);
        const whole = unhex(arg.rfc.encapsulated_response);
        for (let i = 0; i < whole.length; i += 1) {
            const config = ohttp.decodeKeyConfig(unhex(arg.rfc.key_config));
            const {opener} = await ohttp.encapsulateRequest(config, unhex(arg.rfc.request), unhex(arg.rfc.ephemeral_private_key));
            const flipped = Uint8Array.from(whole); flipped[i] ^= 0x01;
            try { await opener.open(flipped); results.add("accepted"); } catch (error) { note(error); }
        }
        const chunked = unhex(arg.chunked.encapsulated_response);
        const config = ohttp.decodeKeyConfig(unhex(arg.chunked.key_config));
        const sealer = await ohttp.ChunkedRequestSealer.create(config, unhex(arg.chunked.ephemeral_private_key));
        await sealer.close(unhex(arg.chunked.request));
        for (let i = 0; i < chunked.length; i += 1) {
            for (const variant of ["flip", "cut"]) {
                const opener = sealer.responseOpener();
                const body = variant === "flip" ? Uint8Array.from(chunked) : chunked.slice(0, i);
                if (variant === "flip") body[i] ^= 0x80;
                try { await opener.feed(body); await opener.finish(); results.add("accepted"); }
                catch (error) { note(error); }
            }
        }
        return [...results];
    """,
        {"rfc": RFC9458, "chunked": CHUNKED},
    )
    assert got == ["SealError:"]


def test_reject_low_order_public_key(page: Page) -> None:
    got = run(
        page,
        """
        const zero = octets.concat(unhex("010020"), new Uint8Array(32), unhex("000400010001"));
        try { await ohttp.encapsulateRequest(ohttp.decodeKeyConfig(zero), new Uint8Array(1)); return "sealed"; }
        catch (error) { return error.name; }
    """,
    )
    assert got == "KeyConfigError"


# --- where WebCrypto is missing ------------------------------------------------------------------


def test_reject_sealing_outside_a_secure_context(browser: Browser) -> None:
    """A page from a name that does not look local over plain HTTP: no crypto.subtle, and the page says why."""
    with seal_page(browser, "http://sluice.example.org") as insecure:
        got = run(insecure, "return [window.isSecureContext, typeof crypto.subtle, seal.sealingAvailable()];")
    secure, subtle, available = got
    assert (secure, subtle, available["ok"]) == (False, "undefined", False)
    assert "not a secure context" in available["reason"] and "WebCrypto" in available["reason"]


def test_sealing_available_on_loopback(page: Page) -> None:
    assert run(page, "return seal.sealingAvailable();") == {"ok": True, "reason": ""}


def test_reject_sealing_without_webcrypto(browser: Browser) -> None:
    """A secure context whose browser offers no crypto.subtle: the page says so, and sealing refuses."""
    with seal_page(browser, LOOPBACK) as bare:
        got = run(
            bare,
            """
            Object.defineProperty(Crypto.prototype, "subtle", {get: () => undefined});
            const available = seal.sealingAvailable();
            try { await hpke.setupSender(new Uint8Array(32), new Uint8Array(0)); return [available, "sealed"]; }
            catch (error) { return [available, error.name]; }
        """,
        )
    assert got[0]["ok"] is False and "no WebCrypto" in got[0]["reason"]
    assert got[1] == "SealError"
