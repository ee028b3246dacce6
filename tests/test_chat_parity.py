"""Chat and the OpenAI-compatible endpoint answer a conversation alike (issue 9).

The language a conversation is answered in, numbered answers, the fixes heading and
`usage`, checked on the real `kbq serve` over loopback with the official `openai`
client, plus fast checks of the rules in kb (kb.chatlang, kb.tokenize.count_tokens).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kb.chat import chat_settings
from serving import base_env, ingested_server

GEMMA_CASE = "llamafactory-7416"
VAGUE_EN = "my gemma 3 loss looks wrong, far too high"
VAGUE_ZH = "我的 gemma3 训练 loss 看着不对，一开始就特别高"
TRACEBACK = """Traceback (most recent call last):
  File "train.py", line 88, in <module>
    trainer.train()
  File "trainer.py", line 1539, in train
    return inner_training_loop(
RuntimeError: CUDA error: an illegal memory access was encountered while computing the loss of the model"""
# An English report with one line of Chinese in it (what the reporter's colleague said).
EN_REPORT_ONE_ZH_LINE = """Fine-tuning gemma 3 with LLaMA-Factory and DeepSpeed ZeRO-3 on eight GPUs.
The loss starts around 70 at the first step and then stalls near 10 for the whole epoch.
同事说他那边也是这样
I expected it to go down to about 1 like it does for other models, what is wrong?"""


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _answered_in(reply: str) -> str:
    """Which language's reply templates (kb/data/chat.yaml) the reply is made of."""
    for language in ("en", "zh"):
        words = chat_settings()["text"][language]
        openings = tuple(words[key].split("{")[0] for key in ("closest", "best_guess", "no_case", "reset"))
        if reply.startswith(openings):
            return language
    raise AssertionError(f"a reply in no known language: {reply[:80]!r}")


def _fixes_headings() -> list[str]:
    return [chat_settings()["text"][language]["fixes"] for language in ("en", "zh")]


# -- the server -------------------------------------------------------------------------

@dataclass
class Server:
    url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp(f"parity-{request.param}")
    home = base / "home"
    home.mkdir()
    with ingested_server(base, request.param, base_env(home)) as (port, _):
        yield Server(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(server: Server):
    import openai

    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60) as official:
        yield official


def _chat(api: httpx.Client, message: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, **({"session_id": session_id} if session_id else {})}
    response = api.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _session(api: httpx.Client, messages: list[str]) -> list[dict[str, Any]]:
    """Each turn of a conversation held on /v1/chat."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        turns.append(_chat(api, message, turns[-1]["session_id"] if turns else None))
    return turns


def _completion(client, user_messages: list[str], replies: list[str] | None) -> str:
    """The OpenAI endpoint's answer to the last user message, sent the whole conversation
    with kbq's earlier replies, as a chat front end sends it (or without them: some send none)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for i, text in enumerate(user_messages):
        messages.append({"role": "user", "content": text})
        if replies is not None and i < len(user_messages) - 1:
            messages.append({"role": "assistant", "content": replies[i]})
    completion = client.chat.completions.create(model="kbq", messages=messages)
    return completion.choices[0].message.content


def _same_on_both(api: httpx.Client, client, messages: list[str]) -> list[dict[str, Any]]:
    """Hold the conversation on /v1/chat and check that the OpenAI endpoint, sent the same
    conversation up to each turn, with or without kbq's replies, answers each turn alike."""
    turns = _session(api, messages)
    replies = [turn["reply"] for turn in turns]
    for n in range(1, len(messages) + 1):
        assert _completion(client, messages[:n], replies) == replies[n - 1], f"turn {n} of {messages}"
        assert _completion(client, messages[:n], None) == replies[n - 1], f"turn {n} of {messages}, no replies sent"
    return turns


# -- the language of a conversation ------------------------------------------------------

def test_chinese_session_stays_chinese_when_the_answer_is_a_name(api: httpx.Client, client) -> None:
    turns = _same_on_both(api, client, [VAGUE_ZH, "LLaMA-Factory"])
    assert [t["language"] for t in turns] == ["zh", "zh"]
    assert [_answered_in(t["reply"]) for t in turns] == ["zh", "zh"]
    assert turns[1]["cases"][0]["id"] == GEMMA_CASE


def test_chinese_session_stays_chinese_for_a_number_and_a_traceback(api: httpx.Client, client) -> None:
    first = _chat(api, VAGUE_ZH)
    assert first["question"] is not None, first["reply"]
    turns = _same_on_both(api, client, [VAGUE_ZH, "1", TRACEBACK])
    assert [t["language"] for t in turns] == ["zh", "zh", "zh"]
    assert all(_answered_in(t["reply"]) == "zh" for t in turns)


def test_english_report_with_one_chinese_line_is_answered_in_english(api: httpx.Client, client) -> None:
    turns = _same_on_both(api, client, [EN_REPORT_ONE_ZH_LINE])
    assert turns[0]["language"] == "en" and _answered_in(turns[0]["reply"]) == "en"
    later = _same_on_both(api, client, [VAGUE_EN, EN_REPORT_ONE_ZH_LINE])  # and later in an English conversation
    assert [t["language"] for t in later] == ["en", "en"]


@pytest.mark.parametrize("first,switch,to", [
    (VAGUE_EN, "不好意思，我还是用中文说吧：换成 deepspeed zero2 以后 loss 还是一开始特别高", "zh"),
    (VAGUE_ZH, "Sorry, let me write in English instead: the loss is still far too high after the switch", "en"),
])
def test_a_message_clearly_in_the_other_language_switches(api: httpx.Client, client, first: str, switch: str,
                                                           to: str) -> None:
    turns = _same_on_both(api, client, [first, switch])
    assert turns[0]["language"] != to
    assert turns[1]["language"] == to and _answered_in(turns[1]["reply"]) == to


# -- numbered answers on both endpoints ----------------------------------------------------

@pytest.mark.parametrize("form", ["{n}", "{n}.", "选 {n}", "option {n}"])
def test_numbered_answer_is_the_same_on_the_openai_endpoint(api: httpx.Client, client, form: str) -> None:
    first = _chat(api, VAGUE_EN)
    assert first["question"]["feature"] == "framework", first["reply"]
    number = first["question"]["options"].index("llama-factory") + 1
    answer = form.format(n=number)

    turns = _same_on_both(api, client, [VAGUE_EN, answer])
    assert turns[1]["cases"][0]["id"] == GEMMA_CASE
    assert "llama-factory" in turns[1]["features"]["framework"]  # the option was taken, not the text
    by_name = _session(api, [VAGUE_EN, "llama-factory"])[1]
    assert turns[1]["reply"] == by_name["reply"]


@pytest.mark.parametrize("report,skip", [("训练的时候 loss 变成 nan", "不知道"), ("my loss is nan", "not sure")])
def test_skipped_then_numbered_answers_stay_the_same_over_a_longer_conversation(api: httpx.Client, client, report: str,
                                                                                 skip: str) -> None:
    """A skipped question is not asked again, on either endpoint, and the next number answers the next question."""
    turns = _same_on_both(api, client, [report, skip, "1"])
    first, second = turns[0]["question"], turns[1]["question"]
    assert first and second and second["feature"] != first["feature"]
    assert turns[2]["features"].get(second["feature"]), turns[2]["features"]  # what option 1 stands for


def test_a_number_answers_the_question_the_user_was_shown(client) -> None:
    """The OpenAI endpoint reads the question from the reply the client sends back, as a session
    remembers the question it asked: '2' is the second option listed there."""
    asked = chat_settings()["questions"]["framework"]["en"].format(options="unsloth, llama-factory or something else")
    messages = [{"role": "user", "content": VAGUE_EN}, {"role": "assistant", "content": f"Hmm.\n\n{asked}"},
                {"role": "user", "content": "2"}]
    reply = client.chat.completions.create(model="kbq", messages=messages).choices[0].message.content
    assert GEMMA_CASE in reply.split("\n\n")[0]  # '2' was llama-factory, the gemma case's framework


# -- abstaining replies ------------------------------------------------------------------------

@pytest.mark.parametrize("report,skip", [
    ("the dishwasher in our office kitchen leaks water onto the floor", "not sure"),
    ("我家的洗碗机一直漏水，地板都湿了", "不知道"),
])
def test_abstaining_reply_has_no_fixes_heading(api: httpx.Client, client, report: str, skip: str) -> None:
    messages = [report]
    turns = _session(api, messages)
    while turns[-1]["question"] is not None and len(messages) < 10:
        messages.append(skip)
        turns.append(_chat(api, skip, turns[0]["session_id"]))
    final = turns[-1]
    assert final["abstained"] is True and final["recommended_fixes"] == []
    assert final["question"] is None and final["cases"], final["reply"]  # weak candidates stay in the JSON
    assert not any(heading in final["reply"] for heading in _fixes_headings()), final["reply"]
    # The reply says honestly that no case fits, as the search does, and puts no case forward.
    words = chat_settings()["text"][final["language"]]
    assert final["reply"].startswith(words["no_case"]), final["reply"]
    assert not any(f"`{case['id']}`" in final["reply"] for case in final["cases"]), final["reply"]
    assert _completion(client, messages, [t["reply"] for t in turns]) == final["reply"]


@pytest.mark.parametrize("report", ["gemma3 loss 70 zero3", "gemma3 训练 loss 从 70 开始，zero3"])
def test_a_confident_reply_lists_the_recommended_fixes_under_the_heading(api: httpx.Client, report: str) -> None:
    turn = _chat(api, report)
    assert turn["abstained"] is False and turn["recommended_fixes"], turn["reply"]
    paragraphs = turn["reply"].split("\n\n")
    heading = paragraphs.index(chat_settings()["text"][turn["language"]]["fixes"])
    listed = paragraphs[heading + 1 : heading + 1 + min(3, len(turn["recommended_fixes"]))]
    assert [p.split(" [")[0] for p in listed] == [
        f"- {fix['action']}" + (f" {chat_settings()['text'][turn['language']]['confirmed']}" if fix["confirmed"] else "")
        for fix in turn["recommended_fixes"][:3]
    ]


# -- usage ---------------------------------------------------------------------------------------

def _messages(*user: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text} for text in user]


def test_usage_counts_chinese_characters(client) -> None:
    completion = client.chat.completions.create(model="kbq", messages=_messages("训练损失一直不下降"))
    assert completion.usage.prompt_tokens == 9  # one a character, not one for the unspaced sentence
    reply = completion.choices[0].message.content
    assert completion.usage.completion_tokens >= sum(1 for ch in reply if "\u4e00" <= ch <= "\u9fff")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_usage_prompt_is_every_message_sent(client) -> None:
    messages = [{"role": "system", "content": "You are kbq."}, *_messages("gemma3 loss 70 zero3")]
    assert client.chat.completions.create(model="kbq", messages=messages).usage.prompt_tokens == 3 + 4


@pytest.mark.parametrize("text", ["gemma3 loss 70 zero3", VAGUE_ZH])
def test_streamed_usage_comes_last_and_equals_the_completion_usage(client, text: str) -> None:
    whole = client.chat.completions.create(model="kbq", messages=_messages(text))
    chunks = list(client.chat.completions.create(model="kbq", messages=_messages(text), stream=True,
                                                 stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None and chunk.choices for chunk in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {"include_obfuscation": False}])
def test_no_usage_chunk_unless_asked(client, options: dict[str, bool] | None) -> None:
    extra = {} if options is None else {"stream_options": options}
    chunks = list(client.chat.completions.create(model="kbq", messages=_messages(VAGUE_EN), stream=True, **extra))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_usage_chunk_on_the_wire(api: httpx.Client) -> None:
    """OpenAI's format: with include_usage every chunk has `usage` (null but the last, which has no choices)."""
    body = {"model": "kbq", "messages": _messages(VAGUE_EN), "stream": True, "stream_options": {"include_usage": True}}
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" in chunk for chunk in chunks)
    assert [chunk["usage"] is None for chunk in chunks] == [True] * (len(chunks) - 1) + [False]
    assert chunks[-1]["choices"] == [] and set(chunks[-1]["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.mark.parametrize("extra,where", [
    ({"stream": True, "stream_options": {"include_usage": True, "include_everything": True}},
     "stream_options.include_everything"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_stream_options_are_422_naming_them(api: httpx.Client, extra: dict[str, Any], where: str) -> None:
    response = api.post("/v1/chat/completions", json={"model": "kbq", "messages": _messages(VAGUE_EN), **extra})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(f"{where}: "), response.text


# -- the rules, in kb (imported in each test: the tests above also run on kb before them) -------------

LANGUAGE = {"min_chinese_chars": 6, "min_english_words": 5}


@pytest.mark.parametrize("current,message,expected", [
    (None, VAGUE_ZH, "zh"),
    (None, EN_REPORT_ONE_ZH_LINE, "en"),
    (None, "训练报错了，帮我看看\n" + TRACEBACK, "zh"),  # the user's words, not the pasted log
    (None, TRACEBACK, "en"),  # nothing but a log: all of it decides
    (None, "训练 qwen2 的时候报错 RuntimeError: expected all tensors to be on the same device, but found two", "zh"),
    (None, "lora_target q_proj,v_proj 设了 finetuning_type=lora，stage=sft 以后 loss 不降", "zh"),  # names are not words
    ("zh", "LLaMA-Factory", "zh"),
    ("zh", "Qwen2.5-7B-Instruct, zero3, bf16, lr=1e-5", "zh"),
    ("zh", "2", "zh"),
    ("zh", "选 2", "zh"),
    ("zh", TRACEBACK, "zh"),
    ("zh", "[2024-05-01 10:00:00,123] [INFO] [engine.py:120] Saving model checkpoint to the output directory now", "zh"),
    ("zh", "```\nThe loss is still far too high and it never goes down at all\n```", "zh"),
    ("zh", "learning_rate: 1e-5\nper_device_train_batch_size: 4\nzero_stage: 3", "zh"),
    ("zh", "It still does not work for me at all", "en"),
    ("en", "用的 llama-factory", "en"),
    ("en", "重新开始", "en"),
    ("en", EN_REPORT_ONE_ZH_LINE, "en"),
    ("en", "The loss is still high.\n同事说他那边也是这样", "en"),  # one line of each: no majority
    ("en", "换成 zero2 以后还是一样", "zh"),
    ("en", "训练报错了，帮我看看\n" + TRACEBACK, "zh"),
])
def test_turn_language(current: str | None, message: str, expected: str) -> None:
    from kb.chatlang import turn_language

    assert turn_language(message, current, LANGUAGE) == expected


def test_prose_lines_leave_out_pasted_material() -> None:
    from kb.chatlang import message_language, prose_lines

    assert prose_lines("训练报错了\n" + TRACEBACK + "\n{'loss': 2.31, 'grad_norm': 0.5}\n$ pip install -U deepspeed") == ["训练报错了"]
    assert message_language("") == "en"


def test_a_stored_session_without_a_language_takes_its_first_messages() -> None:
    from kb.chat import ChatState

    assert ChatState.from_json({"messages": [VAGUE_ZH, "LLaMA-Factory"], "asked": [], "pending": None}).language == "zh"
    assert ChatState.from_json(None).language is None


@pytest.mark.parametrize("feature", ["framework", "zero_stage", "finetuning"])
@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_question_a_reply_ends_with_is_read_back(feature: str, language: str) -> None:
    from kb.chat import question_in

    labels = chat_settings()["labels"].get(feature, {})
    values = list(labels)[:3] or ["llama-factory", "unsloth", "trl"]
    named = [str(labels.get(value, value)) for value in values]
    words = chat_settings()["text"][language]
    listed = (", ".join(named) + f" {words['or']} " if language == "en" else "、".join(named) + words["or"]) + words["something_else"]
    question = chat_settings()["questions"][feature][language].format(options=listed)
    reply = f"{words['no_case']}\n\n{question}"
    assert question_in(reply) == {"feature": feature, "options": [*named, words["something_else"]], "values": values}
    assert question_in(words["no_case"]) is None
    assert question_in(f"{question}\n\n{words['need_more']}") is None  # asked earlier, not by this reply


@pytest.mark.parametrize("answer,expected", [
    ("2", "b"), ("2.", "b"), ("#2", "b"), ("选 2", "b"), ("选2", "b"), ("第2个", "b"), ("Option 2", "b"), ("２", "b"),
    ("3", "3"), ("0", "0"), ("2 gpus", "2 gpus"), ("zero 2", "zero 2"),
])
def test_numbered_answer_forms(answer: str, expected: str) -> None:
    from kb.chat import _answer_to_option

    assert _answer_to_option(answer, {"feature": "framework", "options": ["a", "b"], "values": ["a", "b"]}) == expected
    assert _answer_to_option(answer, None) == answer


@pytest.mark.parametrize("text,tokens", [
    ("gemma3 loss 70 zero3", 4),
    ("训练损失不下降", 7),
    ("LLaMA-Factory 训练 loss 为 0。", 7),  # LLaMA, Factory, 训, 练, loss, 为, 0
    ("**Closest case:** `x`", 3),
    ("", 0),
])
def test_count_tokens(text: str, tokens: int) -> None:
    from kb.tokenize import count_tokens

    assert count_tokens(text) == tokens

