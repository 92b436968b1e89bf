"""The web chat's app in-process (issue 15, newcomer traps): the image label after sending, and no share hint.

The Gradio app is built around the tiny demo model and its event handlers are
called as Gradio calls them; ``launch`` serves it on a free port.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import DEMO_DATA, free_port

pytest.importorskip("gradio")

IMAGE = str(DEMO_DATA / "images" / "shape_000.jpg")
OTHER = str(DEMO_DATA / "images" / "shape_001.jpg")


@pytest.fixture(scope="module")
def app(tiny_model: Any) -> Any:
    from lavislite.webui import build_app

    tiny_model.eval()
    return build_app(tiny_model, {"max_new_tokens": 2})


def handlers(app: Any) -> dict[str, Any]:
    return {f.name: f.fn for f in app.fns.values()}


def test_label_says_the_image_was_sent_after_its_message(app: Any) -> None:
    from lavislite.webui import IMAGE_LABEL_PENDING, IMAGE_LABEL_SENT

    fns = handlers(app)
    assert fns["uploaded"](IMAGE, None)["label"] == IMAGE_LABEL_PENDING  # uploaded, not sent yet
    steps = list(fns["send"]("What colour is the shape?", IMAGE, None, None, []))
    *_, (message, session, attached, shown, button, image_box) = steps
    assert attached == IMAGE and session.images and not session.pending  # the image went with the message
    assert image_box["label"] == IMAGE_LABEL_SENT  # before the fix: still "sent with your next message"
    assert fns["uploaded"](IMAGE, attached)["label"] == IMAGE_LABEL_SENT  # the same image stays sent
    assert fns["uploaded"](OTHER, attached)["label"] == IMAGE_LABEL_PENDING  # a new upload goes with the next message
    # The next message without a new image: sent once only.
    *_, (_, session, attached, _, _, _) = list(fns["send"]("And its shape?", IMAGE, session, attached, shown))
    assert len(session.images) == 1 and len(session.messages) == 4
    reset = fns["reset"](session)
    assert reset[3]["label"] == IMAGE_LABEL_PENDING and reset[3]["value"] is None


def test_launch_prints_no_share_hint(app: Any, capfd: pytest.CaptureFixture[str]) -> None:
    from lavislite.webui import launch

    port = free_port()
    launch(app, "127.0.0.1", port, block=False)
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert resp.status == 200
    finally:
        app.close()
    out, err = capfd.readouterr()
    assert "share=True" not in out + err  # the command has no --share
