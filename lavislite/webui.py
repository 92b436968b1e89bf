"""Chat with a trained model in the browser (a small Gradio app).

    pip install -e ".[demo]"        # gradio
    python -m lavislite.webui --checkpoint output/demo/JOB
    python -m lavislite.webui --checkpoint output/demo/JOB --host 0.0.0.0 --port 7860 --max-new-tokens 128

Upload an image, ask about it, ask again: each browser tab holds its own
conversation (a ``lavislite.chat.ChatSession``, the same one the terminal chat
uses), and replies stream into the page as ``model.chat_stream`` generates
them. An image goes into the next message sent after it is uploaded; "Reset"
forgets the conversation and the image.

Gradio is an optional dependency: nothing else in lavislite imports it, and
this module imports it only when the app is built. Nothing is fetched from the
internet: analytics and gradio's version check are off and no share link is made.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Any, Iterator

from lavislite.chat import ChatSession, add_generation_args, add_model_args, check_model_args, generation_settings, load_chat_model
from lavislite.cli import run_entry
from lavislite.common.errors import UserError

INSTALL_HINT = "the web chat needs gradio: pip install -e \".[demo]\" (or pip install 'gradio>=4.44')"

# Gradio phones home unless told not to (analytics, its version check, hub telemetry);
# offline that means seconds of timeouts and refused connections.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}

# The image box says what happens to its image: sent with the next message, or already sent.
IMAGE_LABEL_PENDING = "Image (sent with your next message)"
IMAGE_LABEL_SENT = "Image (sent; upload another to send it with your next message)"


def main(argv: list[str] | None = None) -> int:
    """Serves the web chat until interrupted; returns the exit code."""
    parser = argparse.ArgumentParser(description="chat with a lavislite model in the browser")
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    add_generation_args(parser)
    args = parser.parse_args(argv)

    # 1. Arguments and gradio are checked before the (slow) model load.
    check_model_args(parser, args)
    settings = generation_settings(args)
    gr = import_gradio()

    # 2. The model, shared by every browser tab.
    from lavislite.common.logger import logger, setup_logger

    setup_logger()
    model = load_chat_model(args)

    # 3. The app, served until Ctrl-C.
    app = build_app(model, settings, system=args.system)
    logger.info("web chat on http://%s:%d (gradio %s)", args.host, args.port, gr.__version__)
    launch(app, args.host, args.port)
    return 0


def import_gradio() -> Any:
    """gradio, set up to stay offline.

    Raises:
        UserError: gradio is not installed (with the command that installs it).
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import gradio
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc})") from exc
    return gradio


def build_app(model: Any, settings: dict[str, Any], system: str | None = None) -> Any:
    """The Gradio ``Blocks`` app: image upload, chat box, message box, Send and Reset.

    Args:
        model: a model with ``chat_stream`` (``Blip2Qwen``).
        settings: generation settings (``GenerateConfig`` fields) for every reply.
        system: the system message, or None for the chat processor's.

    Each tab's state is its ``ChatSession`` (made on its first message, so the
    model is never copied into gradio's per-tab state) and the path of the
    image last attached, so an image is sent once, with the message after its upload.
    """
    gr = import_gradio()

    def send(text: str, image: str | None, session: ChatSession | None, attached: str | None, shown: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
        """Streams one turn: the user's message (with a newly uploaded image), then the reply as it grows."""
        text = (text or "").strip()
        if not text:
            yield gr.update(), session, attached, shown, gr.update(), gr.update()
            return
        session = session or ChatSession(model, settings, system=system)
        before = list(shown)
        try:
            if image and image != attached:
                session.attach(image)
                attached = image
            # An image waiting to be sent (this upload, or one whose turn failed) shows above the text.
            picture = [{"role": "user", "content": {"path": attached}}] if session.pending else []
            shown = [*shown, *picture, {"role": "user", "content": text}]
            # The box empties and locks while the reply streams (no second send mid-reply); `unlock` opens it.
            yield gr.update(value="", interactive=False), session, attached, shown, gr.update(interactive=False), gr.update()
            reply = ""
            for piece in session.ask(text):
                reply += piece
                yield gr.update(), session, attached, [*shown, {"role": "assistant", "content": reply}], gr.update(), gr.update()
            # The turn is kept, its image with it: the box no longer promises to send it.
            label = gr.update(label=IMAGE_LABEL_SENT) if attached else gr.update()
            yield gr.update(), session, attached, [*shown, {"role": "assistant", "content": reply}], gr.update(), label
        except UserError as exc:
            # The turn is not kept (the session dropped it too); the message goes back in the box.
            gr.Warning(str(exc))
            yield gr.update(value=text), session, attached, before, gr.update(), gr.update()

    def uploaded(image: str | None, attached: str | None) -> Any:
        """A new image in the box goes with the next message; the one already sent does not go again."""
        return gr.update(label=IMAGE_LABEL_SENT if image and image == attached else IMAGE_LABEL_PENDING)

    def unlock() -> tuple[Any, Any]:
        """Opens the message box and the Send button again, after a reply or an error."""
        return gr.update(interactive=True), gr.update(interactive=True)

    def reset(session: ChatSession | None) -> tuple[Any, ...]:
        """Forgets the conversation and the image."""
        if session is not None:
            session.reset()
        return session, None, [], gr.update(value=None, label=IMAGE_LABEL_PENDING), gr.update(value="", interactive=True), gr.update(interactive=True)

    with gr.Blocks(title="lavislite chat", analytics_enabled=False, **theme_kwargs(gr, gr.Blocks)) as app:
        gr.Markdown("### lavislite chat\nUpload an image, then ask about it. Each message continues the conversation; *Reset* starts over.")
        session_state = gr.State(None)
        attached_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label=IMAGE_LABEL_PENDING, elem_id="image", sources=["upload"], height=320)
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", **chatbot_kwargs(gr))
                message = gr.Textbox(label="Message", placeholder="Ask about the image, then press Enter", elem_id="message", lines=1)
                with gr.Row():
                    send_button = gr.Button("Send", variant="primary", elem_id="send")
                    reset_button = gr.Button("Reset", elem_id="reset")
        inputs = [message, image, session_state, attached_state, chatbot]
        outputs = [message, session_state, attached_state, chatbot, send_button, image]
        # `then` runs after an error too, so the box never stays locked.
        message.submit(send, inputs, outputs).then(unlock, None, [message, send_button])
        send_button.click(send, inputs, outputs).then(unlock, None, [message, send_button])
        image.change(uploaded, [image, attached_state], [image])
        reset_outputs = [session_state, attached_state, chatbot, image, message, send_button]
        reset_button.click(reset, [session_state], reset_outputs)
        if hasattr(chatbot, "clear"):  # the chat box's own trash button: forget what it no longer shows
            chatbot.clear(reset, [session_state], reset_outputs)
    return app


def launch(app: Any, host: str, port: int, block: bool = True) -> Any:
    """Serves ``app`` on ``host:port``.

    No share link and no server-side rendering: both need outside services.
    One reply is generated at a time: tabs asking together would only split
    the device between them, and gradio's queue shows the others their place.

    Args:
        block: wait until the server stops (Ctrl-C); False returns at once
            with the server running in a thread (for use from Python).
    """
    gr = import_gradio()
    kwargs: dict[str, Any] = {"server_name": host, "server_port": port, "share": False, "show_error": True, "prevent_thread_lock": not block}
    params = inspect.signature(app.launch).parameters
    if "quiet" in params:
        # Gradio would print "To create a public link, set `share=True`": a flag this
        # command does not have (main logs the address itself).
        kwargs["quiet"] = True
    if "ssr_mode" in params:  # gradio >= 5: SSR would start a Node server
        kwargs["ssr_mode"] = False
    kwargs.update(theme_kwargs(gr, app.launch))
    return app.queue(default_concurrency_limit=1).launch(**kwargs)


def theme_kwargs(gr: Any, target: Any) -> dict[str, Any]:
    """The theme argument for ``target`` (``Blocks`` before gradio 6, ``launch`` from 6 on).

    System fonts only: gradio's default theme may load web fonts from the internet.
    """
    params = inspect.signature(target).parameters
    if "theme" not in params:
        return {}
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    return {"theme": gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])}


def chatbot_kwargs(gr: Any) -> dict[str, Any]:
    """``type="messages"`` where the Chatbot still has tuple format too (gradio 4.44-5); gradio 6 has only messages."""
    return {"type": "messages"} if "type" in inspect.signature(gr.Chatbot.__init__).parameters else {}


def cli() -> None:
    """The ``lavislite-webui`` console script."""
    sys.exit(run_entry(main))


if __name__ == "__main__":
    cli()
