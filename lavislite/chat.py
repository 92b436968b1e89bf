"""Chat with a trained model in the terminal.

    python -m lavislite.chat --checkpoint output/demo/JOB --image photo.jpg
    lavislite-chat --checkpoint output/demo/JOB --max-new-tokens 128 --do-sample --temperature 0.7
    python -m lavislite.chat --cfg-path projects/demo/train.yaml --options model.finetuned=output/demo/JOB/release
    printf '/image shape.jpg\\nWhat colour is the shape?\\nAnd what shape is it?\\n' | lavislite-chat --checkpoint output/demo/JOB

Each line read from stdin is one user message; the reply is printed on stdout
as ``assistant: <reply>`` while it is generated, one line per turn (a reply
that itself holds line breaks continues on the following lines). Commands:

    /image PATH   attach an image to the next user message (several allowed)
    /reset        forget the conversation (messages and images)
    /quit         leave (end of input does too)

Logs, notes and errors go to stderr, so stdout holds only the replies. On a
terminal a ``user>`` prompt is shown and an error (a missing image, say) is
reported and the chat goes on; with piped input the first error ends the
program (``error: ...``, exit code 2), so a script never gets replies to a
conversation that is not the one it wrote.

The history (every message and image) goes to the model on each turn, as
``Blip2Qwen.chat`` expects. ``lavislite.webui`` runs the same ``ChatSession``
behind a web page.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Iterable, Iterator, TextIO

from lavislite.cli import add_common_args, run_entry
from lavislite.common.errors import UserError

# A chat reply is longer than an evaluation caption (GenerateConfig's default is 30).
CHAT_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256}

# Put between a user turn's images and its text, as in LLaVA-format
# annotations ("<image>\nWhat ..."), the most common instruction data.
IMAGE_TEXT_SEPARATOR = "\n"

COMMANDS_HELP = "/image PATH (attach an image to your next message), /reset (forget the conversation), /quit"

HELP_EPILOG = """\
Each line you type (or pipe in) is one user message; the reply is printed as
"assistant: <reply>". Commands, on a line of their own:
  /image PATH   attach an image to your next message (may be repeated);
                lavislite:projects/demo/data/images/shape_000.jpg names an image shipped with lavislite
  /reset        forget the conversation (messages and images)
  /quit         leave (end of input does too)

Piped input runs a scripted conversation; replies go to stdout, logs to stderr,
and the first error ends it (exit code 2):
  printf '/image lavislite:projects/demo/data/images/shape_000.jpg\\nWhat colour is the shape?\\n' | lavislite-chat --checkpoint output/demo/JOB
"""


def main(argv: list[str] | None = None) -> int:
    """Runs the terminal chat; returns the exit code (a user error raises, ``cli`` turns it into a message)."""
    parser = argparse.ArgumentParser(
        prog="lavislite-chat", description="chat with a lavislite model in the terminal", epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="attach an image to the first message (may be repeated)")
    add_generation_args(parser)
    args = parser.parse_args(argv)

    # 1. Everything the user typed is checked before the (slow) model load.
    check_model_args(parser, args)
    settings = generation_settings(args)
    from lavislite.processors.transforms import open_rgb_image

    first_images = [open_rgb_image(resolve_image_path(path)) for path in args.image]

    # 2. The model, from a checkpoint or a run config.
    from lavislite.common.logger import logger, setup_logger

    setup_logger()  # to stderr: stdout carries only the replies
    model = load_chat_model(args)
    session = ChatSession(model, settings, system=args.system)
    for image in first_images:
        session.attach(image)

    # 3. The conversation: one reply per user line until /quit or end of input.
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting; {COMMANDS_HELP}", file=sys.stderr)
    repl(session, read_user_lines(sys.stdin, interactive), sys.stdout, sys.stderr, interactive)
    if session.pending:
        logger.warning("%d attached image(s) were never sent (no user message followed)", len(session.pending))
    return 0


# -- arguments shared with lavislite.webui ------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--checkpoint`` or ``--cfg-path`` (with ``--options``, ``--import``, ``--debug``), ``--device``, ``--system``."""
    add_common_args(parser, cfg_required=False)
    parser.add_argument("--checkpoint", default=None, help="a trained model: run folder, release folder, exported folder or .pth")
    parser.add_argument("--device", default=None, help="where the model runs (default: cuda when available, else cpu)")
    parser.add_argument("--system", default=None, help="the system message (default: the one the model was trained with)")
    parser.add_argument(
        "--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="the weights' precision (default: the run's run.precision; fp32 when it names none)"
    )
    return parser


def check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with a usage error when neither ``--checkpoint`` nor ``--cfg-path`` names a model."""
    if not args.checkpoint and not args.cfg_path:
        parser.error("--checkpoint or --cfg-path is required")


def add_generation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per ``GenerateConfig`` field (``--max-new-tokens``, ``--do-sample``, ...).

    Built from the dataclass, so a new generation setting gets its flag here
    without a second list to keep in step.
    """
    from lavislite.models.generation import GenerateConfig

    group = parser.add_argument_group("generation (greedy unless --do-sample or --num-beams)")
    for field in dataclasses.fields(GenerateConfig):
        flag = "--" + field.name.replace("_", "-")
        default = CHAT_DEFAULTS.get(field.name, field.default)
        if field.type in (bool, "bool"):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        else:
            kind = {"int": int, "float": float}.get(str(field.type), field.type)
            group.add_argument(flag, dest=field.name, type=kind, default=None, help=f"(default: {default})")  # type: ignore[arg-type]
    return parser


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings the flags give, over the chat defaults; checked now.

    Raises:
        ConfigError: a value out of range (e.g. ``--top-p 2``), before any model is loaded.
    """
    from lavislite.common.schema import validate
    from lavislite.models.generation import GenerateConfig

    settings = dict(CHAT_DEFAULTS)
    for field in dataclasses.fields(GenerateConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            settings[field.name] = value
    validate(GenerateConfig, settings, "generate")
    return settings


def load_chat_model(args: argparse.Namespace) -> Any:
    """The model ``--checkpoint`` / ``--cfg-path`` name, in eval mode on ``--device``.

    With ``--cfg-path`` the run config's ``model`` section is built (its
    ``datasets`` are not); ``--checkpoint`` then becomes ``model.finetuned``,
    as in ``lavislite.evaluate``. Without it the checkpoint's own stored config
    describes the model (``load_from_checkpoint``).

    Raises:
        UserError: a missing checkpoint, an invalid config, weights that do not fit.
    """
    import torch

    import lavislite  # noqa: F401  (registers the built-in names)

    from lavislite.models.release import checkpoint_precision, precision_dtype, run_precision, with_trained_text_processor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_flag = getattr(args, "dtype", None)
    if args.cfg_path:
        from omegaconf import OmegaConf

        from lavislite.common.config import load_config
        from lavislite.common.registry import registry

        if args.checkpoint:
            args.options = [*args.options, f"model.finetuned={args.checkpoint}", "model.load_finetuned=true"]
        cfg = load_config(args)
        # The prompt the run's training datasets teach (system message, max_len), not model.preprocess's default.
        plain = with_trained_text_processor(OmegaConf.to_container(cfg.config, resolve=True))  # type: ignore[arg-type]
        model = registry.get_model_class(cfg.model_cfg.arch).from_config(OmegaConf.create(plain["model"]))
        precision = run_precision(plain, dtype_flag)
    else:
        from lavislite.models.release import load_from_checkpoint

        model, _, _ = load_from_checkpoint(args.checkpoint)
        precision = checkpoint_precision(args.checkpoint, dtype_flag)
    if not hasattr(model, "chat_stream"):
        raise UserError(f"model '{type(model).__name__}' has no chat (chat_stream); chat needs a model such as blip2_qwen")
    # The run's precision: what it was trained and validated in, and half the memory of fp32 for bf16.
    return model.to(device=device, dtype=precision_dtype(precision)).eval()


def resolve_image_path(path: str | os.PathLike[str]) -> str:
    """An image path as the user typed it -> the file to open.

    ``lavislite:projects/demo/data/images/shape_000.jpg`` names a file shipped
    with the package (as ``lavislite:`` does for configs), so the demo's images
    are reachable from an installed package too; ``~`` is expanded.
    """
    from lavislite.common.config import resolve_config_path

    return os.path.expanduser(resolve_config_path(os.fspath(path)))


# -- the conversation ---------------------------------------------------------------------
class ChatSession:
    """One conversation with a model: its history, images and generation settings.

    The model is stateless (``Blip2Qwen.chat`` takes the whole history every
    turn); this object is what remembers. Images attached with ``attach`` go
    into the next user message, in front of its text.

    Attributes:
        messages: the turns so far, ``[{"role", "content"}]`` as ``Blip2Qwen.chat`` takes them.
        images: every image the messages hold, in order.
        pending: images attached for the next user message.
    """

    def __init__(self, model: Any, settings: dict[str, Any] | None = None, system: str | None = None) -> None:
        self.model = model
        self.settings = dict(settings or {})
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.images: list[Any] = []
        self.pending: list[Any] = []

    def attach(self, image: Any) -> None:
        """Attaches an image (a path or a PIL image) to the next user message.

        Raises:
            MissingFileError, DataError: a path that is missing or not an image
                (read now, so the error comes with the command that named it).
        """
        from lavislite.processors.transforms import open_rgb_image

        self.pending.append(open_rgb_image(resolve_image_path(image)) if isinstance(image, (str, os.PathLike)) else image)

    def reset(self) -> None:
        """Forgets every message and image, attached ones included."""
        self.messages.clear()
        self.images.clear()
        self.pending.clear()

    def user_message(self, text: str) -> dict[str, Any]:
        """The next user message: the attached images, then the text.

        Content is a list of parts, so text that happens to hold ``<image>``
        stays text rather than becoming an image placeholder.
        """
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in self.pending]
        parts.append({"type": "text", "text": (IMAGE_TEXT_SEPARATOR if self.pending else "") + text})
        return {"role": "user", "content": parts}

    def conversation(self, text: str) -> tuple[list[Any], list[dict[str, Any]]]:
        """``(images, messages)`` that go to the model when ``text`` is asked next."""
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*self.images, *self.pending], [*system, *self.messages, self.user_message(text)]

    def ask(self, text: str) -> Iterator[str]:
        """Streams the reply to ``text``; once it is complete the turn joins the history.

        The pieces joined equal what ``model.chat`` returns for the same
        conversation (surrounding whitespace stripped). A reply that is not
        read to its end (an interrupt, a closed generator) leaves the history
        and the attached images as they were.
        """
        images, messages = self.conversation(text)
        pieces: list[str] = []
        for piece in strip_stream(self.model.chat_stream(images, messages, **self.settings)):
            pieces.append(piece)
            yield piece
        # As a text part: a reply that says "<image>" must not read as a placeholder next turn.
        reply = {"role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}]}
        self.messages.extend([messages[-1], reply])
        self.images.extend(self.pending)
        self.pending.clear()


def strip_stream(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces of a text stream with the whole text's leading and trailing whitespace left out.

    Whitespace at the end of a piece is held back until more text follows, so
    the printed reply equals ``"".join(pieces).strip()`` (what ``generate`` returns).
    """
    held = ""
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        text = held + piece
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            yield body


# -- the terminal loop --------------------------------------------------------------------
def read_user_lines(stream: TextIO, interactive: bool) -> Iterator[str]:
    """The user's lines: with a ``user>`` prompt (and line editing) on a terminal, plain from a pipe."""
    if not interactive:
        for line in stream:
            yield line.rstrip("\r\n")
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform
        pass
    while True:
        try:
            yield input("user> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            print(file=sys.stderr)


def repl(session: ChatSession, lines: Iterable[str], out: TextIO, err: TextIO, interactive: bool) -> None:
    """Runs the conversation: commands and user messages, one streamed reply per message.

    Args:
        session: the conversation state and model.
        lines: the user's input, one message or command per line.
        out: where replies go (``assistant: <reply>`` per turn).
        err: where notes and, on a terminal, errors go.
        interactive: a person is typing: report an error and go on, and let
            Ctrl-C stop a reply. Otherwise the first error raises.

    Raises:
        UserError: with ``interactive=False``, the first bad command or image.
    """
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                if not run_command(session, text, err):
                    return
                continue
            try:
                stream = session.ask(text)
                # The first piece comes before the prefix is printed: an image or
                # message the model cannot take raises here, leaving stdout clean.
                out.write("assistant: " + next(stream, ""))
                out.flush()
                for piece in stream:
                    out.write(piece)
                    out.flush()
            except KeyboardInterrupt:
                if not interactive:
                    raise
                # The reply is dropped: the history keeps only complete turns.
                print("\n[interrupted: this turn is not kept]", file=err)
                continue
            out.write("\n")
            out.flush()
        except UserError as exc:
            if not interactive:
                raise
            print(f"error: {exc}", file=err)


def run_command(session: ChatSession, text: str, err: TextIO) -> bool:
    """Runs one ``/command``; returns False when the chat should end.

    Raises:
        UserError: an unknown command, a missing argument, an unreadable image.
    """
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        print("[conversation reset]", file=err)
    elif name == "/image":
        if not rest:
            raise UserError("/image needs a path: /image PATH")
        # Terminals quote dropped-in paths that hold spaces.
        if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
            rest = rest[1:-1]
        session.attach(rest)  # lavislite:..., ~ resolved there
        print(f"[image attached: {rest}]", file=err)
    elif name == "/help":
        print(COMMANDS_HELP, file=err)
    else:
        raise UserError(f"unknown command '{name}'; commands: {COMMANDS_HELP}, /help")
    return True


def cli() -> None:
    """The ``lavislite-chat`` console script."""
    sys.exit(run_entry(main))


if __name__ == "__main__":
    cli()
