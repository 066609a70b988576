"""`ask --llm` against a local fake OpenAI-compatible server: the tools offered, the real
tool results sent back, the step limit, grounding, retries, timeouts, malformed answers and
the API key kept out of every output."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from otlp_ebpf import llm
from otlp_ebpf.analysis.query_tools import TOOLS
from otlp_ebpf.cli.app import run
from tests.analysis.ask_fixtures import syscalls_snapshot, write
from tests.fake_llm import FakeLLM, Reply, final, tool_call

KEY = "sk-test-Zq81SECRETkey"
QUESTION = "which syscall failed the most?"
OFFLINE_LINE = "`openat` failed the most: 30 of 40 calls (75%)."


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    for name in ("OTLP_EBPF_LLM_URL", "OPENAI_BASE_URL", "OTLP_EBPF_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    waits: list[float] = []
    monkeypatch.setattr(llm, "_sleep", waits.append)  # retries wait on paper, not in the test
    return waits


@pytest.fixture
def snap(tmp_path: Path) -> str:
    return write(tmp_path / "s.json", syscalls_snapshot())


def ask(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["ask", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def tool_messages(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def test_offers_every_tool_and_sends_back_the_real_rows(capsys, snap):
    script = [tool_call("top_syscalls", {"by": "errors"}), final("openat failed 30 of 40 times.")]
    with FakeLLM(script) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m1")
    assert code == 0, err
    first, second = (r.body for r in fake.requests)
    assert fake.requests[0].path == "/v1/chat/completions"
    assert first["model"] == "m1"
    offered = {t["function"]["name"] for t in first["tools"]}
    assert offered == set(TOOLS)
    assert all(t["function"]["parameters"]["type"] == "object" for t in first["tools"])
    # Only the question and what the snapshot holds went out first, never its rows.
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert "futex" not in json.dumps(first) and "testhost" not in json.dumps(first)
    sent = json.loads(tool_messages(second)[0]["content"])
    assert sent["rows"][0] == {
        "syscall": "openat", "calls": 40, "errors": 30, "error_pct": 75.0, "p50_ns": 2_000,
        "p99_ns": 8_000, "max_ns": 16_000, "total_ns": 40_000,
    }  # fmt: skip
    assert tool_messages(second)[0]["tool_call_id"] == "call_1"
    assert "openat failed 30 of 40 times." in out
    assert "tools called: top_syscalls(by=errors)" in out
    assert "grounded: every number" in out


def test_an_invented_number_is_flagged(capsys, snap):
    script = [
        tool_call("top_syscalls", {"by": "errors"}),
        final("openat failed 31 times, 75% of its 40 calls."),
    ]
    with FakeLLM(script) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["grounded"] is False
    assert [u["text"] for u in doc["ungrounded"]] == ["31"]
    assert doc["tool_calls"] == [
        {"step": 1, "name": "top_syscalls", "arguments": {"by": "errors"}, "ok": True}
    ]
    assert [m["role"] for m in doc["exchange"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    code, text, _ = ask_again(capsys, snap, fake_script=script)
    assert "UNGROUNDED numbers" in text and "31" in text


def ask_again(capsys, snap, fake_script):
    with FakeLLM(list(fake_script)) as fake:
        return ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")


def test_step_limit_ends_with_exit_1_and_the_offline_answer(capsys, snap):
    script = [tool_call("overview", {}, f"c{i}") for i in range(10)]
    with FakeLLM(script) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m",
                             "--max-steps", "3")  # fmt: skip
    assert code == 1
    assert len(fake.requests) == 3
    assert "no final answer after 3 steps" in err
    assert len(err.strip().splitlines()) == 1
    assert OFFLINE_LINE in out


def test_5xx_is_retried_with_backoff_then_answers(capsys, snap, _clean_env):
    script = [Reply({"error": "busy"}, 500), Reply({"error": "busy"}, 503), final("ok: 30.")]
    with FakeLLM(script) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert code == 0
    assert len(fake.requests) == 3
    assert _clean_env == [1.0, 2.0]  # exponential
    assert "ok: 30." in out


def test_retry_after_is_honoured_and_bounded(capsys, snap, _clean_env):
    script = [
        Reply({"error": "slow down"}, 429, {"Retry-After": "7"}),
        Reply({"error": "slow down"}, 429, {"Retry-After": "86400"}),
        final("done"),
    ]
    with FakeLLM(script) as fake:
        code, _, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert code == 0
    assert _clean_env == [7.0, llm.LONGEST_WAIT_S]


def test_5xx_forever_gives_up_after_the_retries(capsys, snap, _clean_env):
    with FakeLLM([Reply({"e": 1}, 500) for _ in range(10)]) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert code == 1
    assert len(fake.requests) == 4
    assert "HTTP 500 (after 4 attempts)" in err
    assert OFFLINE_LINE in out


def test_a_timeout_is_retried(capsys, snap):
    script = [Reply(delay_s=1.5, body={}), final("answered after a timeout")]
    with FakeLLM(script) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m",
                             "--timeout", "0.3")  # fmt: skip
    assert code == 0, err
    assert "answered after a timeout" in out


def test_timeouts_every_time_end_in_exit_1(capsys, snap):
    script = [Reply(delay_s=1.0, body={}), Reply(delay_s=1.0, body={})]
    with FakeLLM(script) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m",
                             "--timeout", "0.2", "--retries", "1")  # fmt: skip
    assert code == 1
    assert "no answer within 0.2 s (after 2 attempts)" in err
    assert OFFLINE_LINE in out


def test_unknown_tool_and_bad_arguments_go_back_to_the_model(capsys, snap):
    script = [
        tool_call("drop_tables", {}),
        tool_call("top_syscalls", "{by: errors", "c2"),
        tool_call("top_syscalls", {"by": "bogus"}, "c3"),
        final("I could not tell."),
    ]
    with FakeLLM(script) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m", "--json")
    assert code == 0
    errors = [json.loads(tool_messages(r.body)[-1]["content"]) for r in fake.requests[1:]]
    assert "unknown tool 'drop_tables'" in errors[0]["error"]
    assert "arguments are not valid JSON" in errors[1]["error"]
    assert "by must be one of" in errors[2]["error"]
    doc = json.loads(out)
    assert [c["ok"] for c in doc["tool_calls"]] == [False, False, False]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply({"choices": [{"message": {"tool_calls": [{"id": "x"}]}}]}), "malformed tool call"),
        (Reply(raw="<html>proxy error</html>"), "the answer is not JSON"),
        (Reply({"object": "list", "data": []}), "not a chat completion"),
        (Reply({"choices": [{"message": {"content": ""}}]}), "neither text nor a tool call"),
        (Reply({"error": "no such model"}, 404), "HTTP 404"),
    ],
)
def test_nonsense_gives_one_line_exit_1_and_the_offline_answer(capsys, snap, reply, message):
    with FakeLLM([reply]) as fake:
        code, out, err = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert OFFLINE_LINE in out


def test_nonsense_with_json_carries_the_offline_answer(capsys, snap):
    with FakeLLM([Reply(raw="garbage")]) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m", "--json")
    assert code == 1
    doc = json.loads(out)
    assert "not JSON" in doc["error"]
    assert doc["offline"]["answer"] == OFFLINE_LINE


def test_the_key_is_sent_but_never_shown(capsys, snap, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # A server that echoes the Authorization header into its error, with --debug on.
    with FakeLLM([Reply(status=401, echo_auth=True)]) as fake:
        code, out, err = ask(capsys, "--debug", QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert code == 1
    assert "HTTP 401" in err and "***" in err
    assert KEY not in out + err
    script = [Reply({"e": 1}, 500), tool_call("overview", {}), final("fine")]
    with FakeLLM(script) as fake:
        code, out, err = ask(capsys, "--debug", QUESTION, snap, "--llm", fake.url, "--model", "m",
                             "--json")  # fmt: skip
    assert code == 0 and "retrying" in err
    assert KEY not in out + err


def test_without_a_key_no_authorization_header(capsys, snap):
    with FakeLLM([final("none")]) as fake:
        assert ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")[0] == 0
    assert "Authorization" not in fake.requests[0].headers


def test_url_and_model_from_the_environment_in_order(capsys, snap, monkeypatch):
    with FakeLLM([final("from env")]) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OTLP_EBPF_LLM_MODEL", "envmodel")
        code, out, _ = ask(capsys, QUESTION, snap)
    assert code == 0 and "from env" in out
    assert fake.requests[0].body["model"] == "envmodel"
    with FakeLLM([final("ours wins")]) as ours:
        monkeypatch.setenv("OTLP_EBPF_LLM_URL", ours.url)  # above OPENAI_BASE_URL (dead now)
        code, out, _ = ask(capsys, QUESTION, snap, "--model", "flag")
    assert code == 0 and "ours wins" in out
    assert ours.requests[0].body["model"] == "flag"
    with FakeLLM([final("flag wins")]) as flag:
        monkeypatch.setenv("OTLP_EBPF_LLM_URL", "http://127.0.0.1:9/v1")
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", flag.url + "/chat/completions")
    assert code == 0 and "flag wins" in out
    assert flag.requests[0].path == "/v1/chat/completions"


def test_offline_makes_no_network_request(capsys, snap, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("offline ask opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    code, out, _ = ask(capsys, QUESTION, snap)
    assert code == 0 and OFFLINE_LINE in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm", "ftp://x/v1", "--model", "m"], "expected an http:// or https:// URL"),
        (["--llm", "http://127.0.0.1:9/v1"], "needs a model name"),
        (["--max-steps", "0"], "--max-steps must be from 1 to 50"),
    ],
)
def test_bad_llm_options_exit_2(capsys, snap, args, message):
    code, _, err = ask(capsys, QUESTION, snap, *args)
    assert code == 2 and message in err


def test_a_refused_connection_is_exit_1(capsys, snap, _clean_env):
    # Port 9 (discard) on loopback: nothing listens in the test environment.
    code, out, err = ask(capsys, QUESTION, snap, "--llm", "http://127.0.0.1:9/v1", "--model", "m")
    assert code == 1
    assert "ConnectError" in err and "(after 4 attempts)" in err
    assert OFFLINE_LINE in out


def test_arguments_as_an_object_are_accepted_and_the_answer_is_escaped(capsys, snap):
    call = tool_call("syscall_errors", {})
    call.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {
        "syscall": "openat"
    }
    script = [call, final("\x1b[2J[bold red]openat[/] failed 30 times\x07")]
    with FakeLLM(script) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m")
    assert code == 0
    sent = json.loads(tool_messages(fake.requests[1].body)[0]["content"])
    assert [r["errors"] for r in sent["rows"]] == [25, 5]
    assert "\x1b" not in out and "\x07" not in out
    assert "[bold red]openat[/] failed 30 times" in out  # shown as text, not as markup


def test_a_number_the_model_passed_as_an_argument_does_not_ground_itself(capsys, snap):
    script = [tool_call("top_syscalls", {"by": "errors", "limit": 31}), final("31 errors.")]
    with FakeLLM(script) as fake:
        code, out, _ = ask(capsys, QUESTION, snap, "--llm", fake.url, "--model", "m", "--json")
    assert code == 0
    assert [u["text"] for u in json.loads(out)["ungrounded"]] == ["31"]
