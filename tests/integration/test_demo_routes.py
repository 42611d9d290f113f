"""The routes beyond chat through `sluice demo` (Responses, tool calls, rerank, score), with the openai client."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from tests.integration.test_demo import KEY, Demo, demo  # noqa: F401 (the module-scoped demo, mux and exec)

pytestmark = pytest.mark.integration

CHAT_TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}},
]
RESPONSE_TOOLS = [{"type": "function", **tool["function"]} for tool in CHAT_TOOLS]  # type: ignore[dict-item]


def test_responses_plain(demo: Demo) -> None:
    answer = demo.client().responses.create(model="standin-chat", input="Hello there", max_output_tokens=12)
    assert answer.output_text and len(answer.output_text.split()) == 12
    assert answer.usage is not None and answer.usage.output_tokens == 12 and answer.usage.input_tokens == 2
    raw = demo.client().responses.with_raw_response.create(model="standin-chat", input="Hello there", max_output_tokens=12)
    assert raw.headers["sluice-store"] == "false"
    assert raw.parse().output_text == answer.output_text


def test_responses_stream(demo: Demo) -> None:
    plain = demo.client().responses.create(
        model="standin-chat", input=[{"role": "user", "content": "Hello there"}], max_output_tokens=12
    )
    events = list(
        demo.client().responses.create(
            model="standin-chat", input=[{"role": "user", "content": "Hello there"}], max_output_tokens=12, stream=True
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 12 and "".join(deltas) == plain.output_text
    assert events[0].type == "response.created"
    final = events[-1]
    assert final.type == "response.incomplete" or final.type == "response.completed"
    assert final.response.usage is not None and final.response.usage.output_tokens == 12


def test_responses_parallel_tool_calls_stream_unchanged(demo: Demo) -> None:
    kwargs = {"model": "standin-chat", "input": "What now?", "tools": RESPONSE_TOOLS, "tool_choice": "required"}
    plain = demo.client().responses.create(**kwargs)  # type: ignore[call-overload]
    calls = [item for item in plain.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["weather", "time"]
    events = list(demo.client().responses.create(stream=True, **kwargs))  # type: ignore[call-overload]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(d.call_id, d.name, d.arguments) for d in done] == [(c.call_id, c.name, c.arguments) for c in calls]
    pieces: dict[int, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            pieces[e.output_index] = pieces.get(e.output_index, "") + e.delta
    assert [pieces[0], pieces[1]] == [c.arguments for c in calls]
    assert all(json.loads(c.arguments)["query"] for c in calls)


def test_chat_parallel_tool_calls_stream_unchanged(demo: Demo) -> None:
    kwargs = {
        "model": "standin-chat",
        "messages": [{"role": "user", "content": "What now?"}],
        "tools": CHAT_TOOLS,
        "tool_choice": "required",
    }
    plain = demo.client().chat.completions.create(**kwargs)  # type: ignore[call-overload]
    message = plain.choices[0].message
    assert plain.choices[0].finish_reason == "tool_calls" and message.tool_calls and len(message.tool_calls) == 2
    calls: dict[int, dict[str, str]] = {}
    for chunk in demo.client().chat.completions.create(stream=True, **kwargs):  # type: ignore[call-overload]
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert [calls[i] for i in sorted(calls)] == [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}  # type: ignore[union-attr]
        for c in message.tool_calls
    ]


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"store": True}, "store_not_supported"),
        ({"previous_response_id": "resp_123"}, "server_state_not_supported"),
        ({"conversation": "conv_1"}, "server_state_not_supported"),
        ({"background": True}, "server_state_not_supported"),
    ],
)
def test_reject_server_state(demo: Demo, extra: dict[str, object], code: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        demo.client().responses.create(model="standin-chat", input="x", **extra)  # type: ignore[call-overload]
    assert info.value.body["code"] == code  # type: ignore[index]
    assert "stateless" in info.value.body["message"]  # type: ignore[index]
    assert "resp_123" not in info.value.response.text


def test_responses_route_not_served_by_embeddings(demo: Demo) -> None:
    response = httpx2.post(
        f"{demo.url}/v1/responses",
        json={"model": "standin-embed", "input": "x"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "route_not_served"


def test_sealed_responses(demo: Demo) -> None:
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    fingerprint = fetch_fingerprint(f"{demo.url}/v1")
    plain = demo.client().responses.create(model="standin-chat", input="Hello there", max_output_tokens=9)
    with sealed_openai_client(f"{demo.url}/v1", KEY, fingerprint) as client:
        answer = client.responses.create(model="standin-chat", input="Hello there", max_output_tokens=9)
        assert answer.output_text == plain.output_text
        deltas = [
            e.delta
            for e in client.responses.create(model="standin-chat", input="Hello there", max_output_tokens=9, stream=True)
            if e.type == "response.output_text.delta"
        ]
        assert "".join(deltas) == plain.output_text


def _post(demo: Demo, path: str, body: dict[str, object]) -> httpx2.Response:
    return httpx2.post(f"{demo.url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def test_rerank(demo: Demo) -> None:
    documents = ["the cat sat", "a dog ran", "stocks fell today", "cats purr"]
    response = _post(demo, "/v1/rerank", {"model": "standin-embed", "query": "cats", "documents": documents, "top_n": 3})
    assert response.status_code == 200, response.text
    answer = response.json()
    scores = [r["relevance_score"] for r in answer["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert {documents[r["index"]] for r in answer["results"]} <= set(documents)
    assert answer["usage"]["total_tokens"] == 4 * 1 + 11  # the query once per document, then the documents
    again = _post(demo, "/v1/rerank", {"model": "standin-embed", "query": "cats", "documents": documents})
    assert [r["relevance_score"] for r in again.json()["results"]][:3] == scores


def test_score(demo: Demo) -> None:
    response = _post(demo, "/v1/score", {"model": "standin-embed", "text_1": "cats", "text_2": ["a", "b c"]})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(0 <= d["score"] <= 1 for d in data)
    single = _post(demo, "/v1/score", {"model": "standin-embed", "text_1": ["cats"], "text_2": "b c"}).json()
    assert single["data"][0]["score"] == data[1]["score"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/rerank", {"model": "standin-embed", "query": "q", "documents": ["d"] * 1001}, 422, "too_long"),
        ("/v1/rerank", {"model": "standin-embed", "query": "q", "documents": ["x" * 65537]}, 422, "too_long"),
        ("/v1/rerank", {"model": "standin-embed", "query": "q", "documents": []}, 422, "too_short"),
        ("/v1/rerank", {"model": "standin-embed", "documents": ["d"]}, 422, "missing_field"),
        ("/v1/rerank", {"model": "standin-embed", "query": "q", "documents": [{"text": "d"}]}, 422, "wrong_type"),
        ("/v1/rerank", {"model": "standin-chat", "query": "q", "documents": ["d"]}, 404, "route_not_served"),
        ("/v1/score", {"model": "standin-embed", "text_1": "q", "text_2": ["d"] * 1001}, 422, "too_long"),
        ("/v1/score", {"model": "standin-embed", "text_1": "q", "text_2": "d", "extra": 1}, 422, "unknown_field"),
    ],
)
def test_reject_scoring_bodies_outside_the_policy(demo: Demo, path: str, body: dict[str, object], status: int, code: str) -> None:
    response = _post(demo, path, body)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_sealed_rerank(demo: Demo) -> None:
    from sluice_sdk import fetch_fingerprint, sealed_openai_client

    body = {"model": "standin-embed", "query": "cats", "documents": ["the cat sat", "a dog ran"]}
    clear = _post(demo, "/v1/rerank", body).json()["results"]
    with sealed_openai_client(f"{demo.url}/v1", KEY, fetch_fingerprint(f"{demo.url}/v1")) as client:
        sealed = client.post("/rerank", body=body, cast_to=object)["results"]  # type: ignore[index]
    assert sealed == clear


# --- audio -----------------------------------------------------------------------------------


def test_transcription_of_wav_and_mp3(demo: Demo) -> None:
    from tests.audio_files import mp3, wav

    client = demo.client()
    spoken = client.audio.transcriptions.create(model="standin-chat", file=("speech.wav", wav(2.0), "audio/wav"))
    assert len(spoken.text.split()) == 5  # 2.5 words a second
    again = client.audio.transcriptions.create(model="standin-chat", file=("other name.wav", wav(2.0)))
    assert again.text == spoken.text  # a function of the audio alone, not of the file's name
    music = client.audio.transcriptions.create(model="standin-chat", file=("clip.mp3", mp3(), "audio/mpeg"))
    assert music.text and music.text != spoken.text
    with pytest.deprecated_call():  # the openai client marks translations deprecated; the route is served
        translated = client.audio.translations.create(model="standin-chat", file=("speech.wav", wav(2.0), "audio/wav"))
    assert translated.text and translated.text != spoken.text


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_transcription_text_formats(demo: Demo, response_format: str) -> None:
    from tests.audio_files import wav

    text = demo.client().audio.transcriptions.create(
        model="standin-chat",
        file=("speech.wav", wav(2.0)),
        response_format=response_format,  # type: ignore[arg-type]
    )
    assert isinstance(text, str) and text.strip()
    if response_format == "vtt":
        assert text.startswith("WEBVTT")
    if response_format == "srt":
        assert text.startswith("1\n00:00:00,000 --> 00:00:02,000")


def test_transcription_verbose_json_with_words(demo: Demo) -> None:
    from tests.audio_files import wav

    answer = demo.client().audio.transcriptions.create(
        model="standin-chat",
        file=("speech.wav", wav(2.0)),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
        temperature=0.0,
        prompt="a meeting",
    )
    assert answer.duration == 2.0 and answer.words is not None and len(answer.words) == 5


def test_transcription_stream(demo: Demo) -> None:
    from tests.audio_files import wav

    response = httpx2.post(
        f"{demo.url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {KEY}"},
        files={"file": ("speech.wav", wav(2.0), "audio/wav")},
        data={"model": "standin-chat", "stream": "true"},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 5 and all(c["choices"] for c in chunks)  # the usage event was not asked for


def _form(demo: Demo, content: bytes, content_type: str) -> httpx2.Response:
    return httpx2.post(
        f"{demo.url}/v1/audio/transcriptions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
        timeout=30,
    )


def test_reject_bad_audio_forms_at_the_appliance(demo: Demo) -> None:
    from tests.audio_files import wav

    good = httpx2.Request("POST", demo.url, files={"file": ("a.wav", wav(0.1))}, data={"model": "standin-chat"})
    body, content_type = good.read(), good.headers["content-type"]
    assert _form(demo, body, content_type).status_code == 200
    liar = content_type.replace("boundary=", "boundary=x")
    cases = [
        (body, liar, 400, "bad_boundary"),
        (body[:-10], content_type, 400, "no_final_boundary"),
        (body, "application/json", 415, "unsupported_media_type"),  # the API guard, before the route
        (body.replace(b"RIFF", b"RIFX"), content_type, 400, "not_audio"),
        (body.replace(b'filename="a.wav"', b'filename="../../etc/passwd"'), content_type, 400, "bad_filename"),
    ]
    for content, media, status, code in cases:
        response = _form(demo, content, media)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_sealed_transcription(demo: Demo) -> None:
    from sluice_sdk import fetch_fingerprint, sealed_openai_client
    from tests.audio_files import mp3, wav

    clear = demo.client().audio.transcriptions.create(model="standin-chat", file=("a.wav", wav(2.0)))
    with sealed_openai_client(f"{demo.url}/v1", KEY, fetch_fingerprint(f"{demo.url}/v1")) as client:
        sealed = client.audio.transcriptions.create(model="standin-chat", file=("a.wav", wav(2.0)))
        assert sealed.text == clear.text
        vtt = client.audio.transcriptions.create(model="standin-chat", file=("b.mp3", mp3()), response_format="vtt")
        assert isinstance(vtt, str) and vtt.startswith("WEBVTT")
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.transcriptions.create(model="standin-chat", file=("c.wav", b"not audio at all"))
        assert info.value.body["code"] == "not_audio"  # type: ignore[index]


# --- what produced an answer -----------------------------------------------------------------


def test_answers_name_revision_and_backend_version(demo: Demo) -> None:
    body = {"model": "standin-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {KEY}"}
    plain = httpx2.post(f"{demo.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert plain.headers["sluice-model-revision"] == "standin-weights-1"
    assert plain.headers["sluice-backend-version"] == "sluice-standin-1"
    with httpx2.stream(
        "POST", f"{demo.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=30
    ) as streamed:
        assert streamed.headers["sluice-model-revision"] == "standin-weights-1"
        "".join(streamed.iter_text())
    embedded = httpx2.post(
        f"{demo.url}/v1/embeddings", json={"model": "standin-embed", "input": "x"}, headers=headers, timeout=30
    )
    assert "sluice-model-revision" not in embedded.headers  # none configured
    assert embedded.headers["sluice-backend-version"] == "sluice-standin-1"


def test_models_carry_their_status(demo: Demo) -> None:
    listing = httpx2.get(f"{demo.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    for model in listing["data"]:
        assert model["status"] == "ready" and model["ready_instances"] >= 1 and "estimated_wait" not in model
    assert {m.id for m in demo.client().models.list()} == {"standin-chat", "standin-embed"}
