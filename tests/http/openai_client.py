"""Captions images through edgecap's OpenAI-compatible API with the official `openai` package,
as Frigate and Home Assistant's OpenAI providers do. Used by tests/http_api.rs.

    python openai_client.py BASE_URL API_KEY IMAGE [IMAGE...]

Prints one JSON line per image: the plain answer's content, model, usage and finish reason, the
streamed answer's content joined from its chunks, and the listed models.
"""

import base64
import json
import sys

import openai


def data_url(path):
    kind = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp", "gif": "gif"}[
        path.rsplit(".", 1)[-1].lower()
    ]
    with open(path, "rb") as f:
        return f"data:image/{kind};base64," + base64.b64encode(f.read()).decode()


def messages(path):
    return [
        {"role": "system", "content": "You describe security camera frames."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe what you see in one sentence."},
                {"type": "image_url", "image_url": {"url": data_url(path)}},
            ],
        },
    ]


def main():
    base_url, api_key, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
    models = [m.id for m in client.models.list()]
    for path in images:
        plain = client.chat.completions.create(model=models[0], messages=messages(path), max_tokens=30)
        stream = client.chat.completions.create(
            model=models[0],
            messages=messages(path),
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed, finish, usage = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                streamed += choice.delta.content or ""
                finish = choice.finish_reason or finish
        print(
            json.dumps(
                {
                    "image": path,
                    "content": plain.choices[0].message.content,
                    "model": plain.model,
                    "object": plain.object,
                    "finish_reason": plain.choices[0].finish_reason,
                    "completion_tokens": plain.usage.completion_tokens,
                    "streamed": streamed,
                    "streamed_finish": finish,
                    "streamed_completion_tokens": usage,
                    "models": models,
                }
            ),
            flush=True,
        )
    # A refused request surfaces as the client's typed error, with edgecap's message.
    try:
        client.chat.completions.create(
            model=models[0],
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.org/a.jpg"}}]}],
        )
        print(json.dumps({"refused": None}))
    except openai.BadRequestError as e:
        print(json.dumps({"refused": e.status_code, "message": str(e)}))


if __name__ == "__main__":
    main()
