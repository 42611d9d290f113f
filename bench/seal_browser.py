"""Benchmark: sealing in the browser (appliance/web/chat/*.js on WebCrypto), in headless Chromium.

Prints the time per operation, in milliseconds (median and p90 over the runs):

* seal: a 4 KiB chat request sealed as the page seals it (fresh X25519 key, RFC 9458);
* seal+open: the same request sealed with a fixed ephemeral key and a 4 KiB answer,
  sealed beforehand by the SDK's gateway code to that key, opened and decoded;
* chunked open: a 4 KiB streamed answer in 64 chunks opened as it would arrive.

    .venv/bin/python bench/seal_browser.py [--runs 200]

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; no server: the
page and the modules are served by playwright under a loopback origin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sluice_sdk import _hazmat, bhttp, ohttp  # noqa: E402
from sluice_sdk.keyconfig import KeyConfig  # noqa: E402
from sluice_sdk.keys import GatewayKey  # noqa: E402
from tests.appliance.web.seal_browser import chromium, run, seal_page  # noqa: E402

VECTOR = json.loads((ROOT / "tests/sluice_sdk/vectors/rfc9458_appendix_a.json").read_text())
SIZE = 4096


def fixtures() -> dict[str, str]:
    config = KeyConfig.decode(bytes.fromhex(VECTOR["key_config"]))
    gateway = GatewayKey(config, _hazmat.private_key_from_bytes(0x20, bytes.fromhex(VECTOR["gateway_private_key"])))
    content = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (SIZE - 60)}]}).encode()
    request = bhttp.encode_request(
        bhttp.Request(b"POST", b"https", b"sluice", b"/v1/chat/completions", ((b"content-type", b"application/json"),), content)
    )
    ephemeral = bytes.fromhex(VECTOR["ephemeral_private_key"])
    enc_request, _ = ohttp._encapsulate_request(config, request, ephemeral)
    _, sealer = ohttp.decapsulate_request(gateway, enc_request)
    answer = bhttp.encode_response(bhttp.Response(200, ((b"content-type", b"application/json"),), b"y" * SIZE))
    enc_response = sealer._seal(answer, bytes(16))
    opener_ctx = ohttp.ChunkedRequestOpener(gateway)
    opener_ctx.feed(ohttp.ChunkedRequestSealer._deterministic(config, ephemeral).close(request))
    opener_ctx.finish()
    response_sealer = opener_ctx._response_sealer(bytes(16))
    encoder = bhttp.ResponseStreamEncoder()
    stream = response_sealer.write(encoder.head(200, ((b"content-type", b"text/event-stream"),)))
    for _ in range(64):
        stream += response_sealer.write(encoder.data(b"z" * (SIZE // 64)))
    stream += response_sealer.close(encoder.end())
    return {
        "config": VECTOR["key_config"],
        "ephemeral": ephemeral.hex(),
        "request": request.hex(),
        "enc_request": enc_request.hex(),
        "enc_response": enc_response.hex(),
        "stream": stream.hex(),
    }


BENCH = """
const config = ohttp.decodeKeyConfig(unhex(arg.f.config));
const request = unhex(arg.f.request), ephemeral = unhex(arg.f.ephemeral);
const encResponse = unhex(arg.f.enc_response), stream = unhex(arg.f.stream);
const times = {seal: [], "seal+open": [], "chunked open": []};
const first = await ohttp.encapsulateRequest(config, request, ephemeral);
if (hex(first.body) !== arg.f.enc_request) throw new Error("the browser sealed other bytes than the SDK");
for (let i = 0; i < arg.runs; i += 1) {
    let t = performance.now();
    await ohttp.encapsulateRequest(config, request);
    times.seal.push(performance.now() - t);
    t = performance.now();
    const {opener} = await ohttp.encapsulateRequest(config, request, ephemeral);
    const answer = bhttp.decodeResponse(await opener.open(encResponse));
    times["seal+open"].push(performance.now() - t);
    if (answer.content.length !== 4096) throw new Error("wrong answer");
    const sealer = await ohttp.ChunkedRequestSealer.create(config, ephemeral);
    await sealer.close(request);
    const chunks = sealer.responseOpener();
    const decoder = new bhttp.ResponseDecoder();
    t = performance.now();
    let size = 0;
    for (let at = 0; at < stream.length; at += 97) {
        for (const plain of await chunks.feed(stream.subarray(at, at + 97))) {
            for (const e of decoder.feed(plain)) size += e.type === "data" ? e.data.length : 0;
        }
    }
    decoder.feed(await chunks.finish());
    decoder.finish();
    times["chunked open"].push(performance.now() - t);
    if (size !== 4096) throw new Error("wrong stream");
}
return times;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with chromium() as browser, seal_page(browser, "http://127.0.0.1:9") as page:
        version = browser.version
        times = run(page, BENCH, {"f": fixtures(), "runs": args.runs})
    print(f"Chromium {version}, {args.runs} runs, 4 KiB request and answer")
    for name, values in times.items():
        values = sorted(values)
        print(f"  {name:<13} median {values[len(values) // 2]:6.2f} ms   p90 {values[int(len(values) * 0.9)]:6.2f} ms")


if __name__ == "__main__":
    main()
