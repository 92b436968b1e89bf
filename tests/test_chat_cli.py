"""The terminal chat (``python -m lavislite.chat``): scripted conversations, history, errors.

The replies it prints are checked against ``model.chat`` run in this process
on the same conversation (greedy, so both are deterministic), and the ids the
model receives on the second turn are checked to hold the first reply.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import DEMO_DATA, REPO, run_env

IMAGE = str(DEMO_DATA / "images" / "shape_288.jpg")
Q1 = "What colour is the shape?"
# Answered differently with and without the first turn in the history by the
# demo model ("It is red." vs "It is a triangle."), so a lost history shows.
Q2 = "Say it again."
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def demo_model(demo_run: Path) -> Any:
    """The demo run's model, loaded in this process."""
    from lavislite.models.release import load_from_checkpoint

    model, _, _ = load_from_checkpoint(str(demo_run))
    return model


def chat_cli(args: list[str], script: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m lavislite.chat`` with ``script`` piped to its stdin."""
    cmd = [sys.executable, "-m", "lavislite.chat", *args]
    return subprocess.run(cmd, input=script, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)


def replies(stdout: str) -> list[str]:
    """The replies printed on stdout (one ``assistant: ...`` line each)."""
    lines = stdout.splitlines()
    assert all(line.startswith("assistant: ") for line in lines), stdout
    return [line[len("assistant: ") :] for line in lines]


def first_turn() -> list[dict[str, Any]]:
    """Turn 1 as the terminal chat sends it: the attached image, a line break, the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + Q1}]}]


def contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_scripted_conversation_keeps_history_and_reset_forgets_it(demo_run: Path, demo_model: Any) -> None:
    script = f"/image {IMAGE}\n{Q1}\n{Q2}\n/reset\n/image {IMAGE}\n{Q1}\n"
    proc = chat_cli(["--checkpoint", str(demo_run), "--max-new-tokens", str(MAX_NEW_TOKENS)], script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    printed = replies(proc.stdout)
    assert len(printed) == 3

    # The same conversation in this process: turn 2 carries turn 1 and its reply.
    model = demo_model
    reply1 = model.chat([IMAGE], first_turn(), max_new_tokens=MAX_NEW_TOKENS)
    second_turn = [*first_turn(), {"role": "assistant", "content": reply1}, {"role": "user", "content": Q2}]
    reply2 = model.chat([IMAGE], second_turn, max_new_tokens=MAX_NEW_TOKENS)
    assert reply1 and reply2
    assert printed == [reply1, reply2, reply1]  # the third: asked afresh after /reset

    # History reaches the model as ids: turn 2's prompt holds the first reply, closed
    # as an assistant turn, and the first question; turn 1's prompt holds neither.
    tok = model.tokenizer
    reply1_turn = tok("<|im_start|>assistant\n" + reply1 + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids1 = model.chat_inputs([IMAGE], first_turn())["input_ids"][0].tolist()
    ids2 = model.chat_inputs([IMAGE], second_turn)["input_ids"][0].tolist()
    assert contains(ids2, reply1_turn) and not contains(ids1, reply1_turn)
    assert ids2[: len(ids1)] == ids1  # turn 1's prompt, unchanged, opens turn 2's
    assert contains(ids2, tok("\n" + Q2, add_special_tokens=False)["input_ids"])


def test_missing_image_is_a_clean_error(demo_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such.jpg"
    # On the command line: reported before the model is loaded.
    start = time.time()
    proc = chat_cli(["--checkpoint", str(demo_run), "--image", str(missing)], "Hello\n")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: no image file at '{missing}'" in proc.stderr
    assert "Traceback" not in proc.stderr and "loaded" not in proc.stderr and proc.stdout == ""
    assert time.time() - start < 60

    # In the script: the turns before it are answered, then the chat stops (exit 2).
    proc = chat_cli(["--checkpoint", str(demo_run), "--max-new-tokens", "4"], f"Hello\n/image {missing}\nWhat colour is it?\n")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: no image file at '{missing}'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(replies(proc.stdout)) == 1


def test_missing_checkpoint_and_bad_settings_are_clean_errors(tmp_path: Path) -> None:
    proc = chat_cli(["--checkpoint", str(tmp_path / "nothing_here")], "")
    assert proc.returncode == 2 and "error: no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr
    proc = chat_cli(["--checkpoint", str(tmp_path), "--top-p", "2"], "")
    assert proc.returncode == 2 and "generate.top_p: must be in (0, 1], got 2.0" in proc.stderr and "Traceback" not in proc.stderr
    proc = chat_cli([], "")
    assert proc.returncode == 2 and "--checkpoint or --cfg-path is required" in proc.stderr


# -- the loop itself, with a model that records what it is asked --------------------------
class RecordingModel:
    """Answers "reply N" in a few pieces, and keeps the (images, messages) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[dict[str, Any]], dict[str, Any]]] = []

    def chat_stream(self, images: list[Any], messages: list[dict[str, Any]], **settings: Any) -> Any:
        self.calls.append((list(images), [dict(m) for m in messages], settings))
        yield from [" ", "reply ", f"{len(self.calls)}", " \n"]


def run_repl(lines: list[str], interactive: bool = False) -> tuple[RecordingModel, str, str]:
    from lavislite.chat import ChatSession, repl

    model = RecordingModel()
    out, err = io.StringIO(), io.StringIO()
    repl(ChatSession(model, {"max_new_tokens": 7}), lines, out, err, interactive)
    return model, out.getvalue(), err.getvalue()


def test_repl_sends_the_whole_history_each_turn() -> None:
    model, out, _ = run_repl([f"/image {IMAGE}", Q1, "", Q2, "/reset", "fresh", "/quit", "never asked"])
    assert out == "assistant: reply 1\nassistant: reply 2\nassistant: reply 3\n"
    assert len(model.calls) == 3
    (images1, msgs1, settings1), (images2, msgs2, _), (images3, msgs3, _) = model.calls
    assert settings1 == {"max_new_tokens": 7}
    user1 = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + Q1}]}
    assert msgs1 == [user1] and len(images1) == 1 and images1[0].size == (64, 64)
    # Turn 2: the same image, turn 1 and its (stripped) reply, then the new question.
    assert images2 == images1
    assert msgs2 == [user1, {"role": "assistant", "content": [{"type": "text", "text": "reply 1"}]}, {"role": "user", "content": [{"type": "text", "text": Q2}]}]
    # After /reset: nothing of before.
    assert images3 == [] and msgs3 == [{"role": "user", "content": [{"type": "text", "text": "fresh"}]}]


def test_repl_errors_stop_a_script_but_not_a_person() -> None:
    from lavislite.common.errors import UserError

    with pytest.raises(UserError, match="unknown command '/imgae'"):
        run_repl(["hi", "/imgae x.jpg", "never asked"])
    model, out, err = run_repl(["/image /no/such.jpg", "/imgae", "hi"], interactive=True)
    assert "error: no image file at '/no/such.jpg'" in err and "error: unknown command '/imgae'" in err
    assert out == "assistant: reply 1\n" and model.calls[0][0] == []  # the bad image was not attached


def test_strip_stream_equals_strip_of_the_whole() -> None:
    from lavislite.chat import strip_stream

    for pieces in (["", " A ", "", "b  ", "\n"], ["  ", " x"], ["\n"], [], ["a", " ", " ", "b"], ["multi\n", "line "]):
        assert "".join(strip_stream(pieces)) == "".join(pieces).strip()


# -- model.chat_stream, which both chats stream from ------------------------------------------
def test_chat_stream_pieces_join_to_the_chat_reply(demo_model: Any) -> None:
    # a caption request: a reply of several tokens ("A small red circle on a light background.")
    describe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe the image briefly."}]}]
    pieces = list(demo_model.chat_stream([IMAGE], describe, max_new_tokens=MAX_NEW_TOKENS))
    assert len([p for p in pieces if p]) > 1  # streamed, not handed over at once
    assert "".join(pieces).strip() == demo_model.chat([IMAGE], describe, max_new_tokens=MAX_NEW_TOKENS)
    # Beam search cannot stream in transformers: the whole reply comes as one piece.
    beams = list(demo_model.chat_stream([IMAGE], first_turn(), max_new_tokens=MAX_NEW_TOKENS, num_beams=2))
    assert beams == [demo_model.chat([IMAGE], first_turn(), max_new_tokens=MAX_NEW_TOKENS, num_beams=2)]


def test_chat_stream_raises_instead_of_hanging(demo_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from lavislite.common.errors import MissingFileError
    from lavislite.common.schema import ConfigError

    with pytest.raises(MissingFileError, match="no image file at 'no_such.jpg'"):
        next(demo_model.chat_stream(["no_such.jpg"], first_turn()))
    with pytest.raises(ConfigError, match="did you mean 'generate.num_beams'"):
        next(demo_model.chat_stream([IMAGE], first_turn(), num_beam=2))

    # An error inside the generating thread ends the stream and is raised to the reader.
    def broken_generate(**kwargs: Any) -> Any:
        raise RuntimeError("generate broke")

    monkeypatch.setattr(demo_model.llm, "generate", broken_generate)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            list(demo_model.chat_stream([IMAGE], first_turn()))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "chat_stream hung after the generating thread failed"
    assert len(outcome) == 1 and str(outcome[0]) == "generate broke"


def test_cfg_path_with_checkpoint_builds_the_same_model(demo_run: Path, demo_model: Any) -> None:
    """``--cfg-path`` builds the run config's model; ``--checkpoint`` fills it (as in evaluate.py)."""
    args = ["--cfg-path", "projects/demo/train.yaml", "--checkpoint", str(demo_run), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    proc = chat_cli(args, f"/image {IMAGE}\n{Q1}\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert replies(proc.stdout) == [demo_model.chat([IMAGE], first_turn(), max_new_tokens=MAX_NEW_TOKENS)]
